"""The Hessian of the dual function (convex_attention.hessian): products, dense assembly, the
conjugate-gradient solve on the mean-zero subspace, and the implicit backward."""
import math
import re

import numpy as np
import pytest
import torch
from helpers import (
    FOREST_CASES,
    GRAPH_CASES,
    REFERENCE_ATOL,
    benchmark_instance,
    flat_np,
    make_graph,
    max_err,
    peaked_mixed_instances,
    random_graph_instance,
    reference_solve,
)

import convex_attention as ca
from convex_attention.dual import dual_function, reparameterized_probs
from convex_attention.exact import exact_attention, tree_backward
from convex_attention.hessian import (
    STALL_ITERATIONS,
    DualHessian,
    ImplicitSolveError,
    cholesky_apply,
    get_hessian,
    implicit_vjp,
    solve_psd,
)


def _random_duals(h, batch, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((batch,) + h.shapes[b], generator=g, dtype=torch.float64) for _, b in h.edges]


@pytest.mark.parametrize("case", GRAPH_CASES)
def test_dense_hessian_gradient_and_products_match_autograd(case):
    inst = random_graph_instance(case, batch=2, seed=1)
    h, temps = inst.h, inst.temps
    hess = get_hessian(h, "cpu")
    lam = _random_duals(h, 2, 3)
    probs = reparameterized_probs(inst.scores, lam, h, temps)
    dense = hess.dense(probs, temps)
    x = hess.flatten(lam)
    for b in range(2):
        # autograd through the dual function of one sample
        def g_flat(v, b=b):
            parts = [p for p in hess.split(v.unsqueeze(0))]
            return dual_function([s[b:b + 1] for s in inst.scores], parts, h, temps).sum()

        want_h = torch.autograd.functional.hessian(g_flat, x[b])
        torch.testing.assert_close(dense[b], want_h, atol=1e-12, rtol=1e-10)
        want_g = torch.autograd.functional.jacobian(g_flat, x[b])
        torch.testing.assert_close(hess.gradient(probs)[b], want_g, atol=1e-12, rtol=1e-10)
    v = torch.randn_like(x)
    torch.testing.assert_close(hess.matvec(probs, temps, v), (dense @ v.unsqueeze(2)).squeeze(2), atol=1e-12,
                               rtol=1e-10)
    # the gauge directions (a constant per edge) are in the null space
    for e in range(h.num_edges):
        ones = torch.zeros_like(x)
        ones[:, hess.offsets[e]:hess.offsets[e + 1]] = 1.0
        assert hess.matvec(probs, temps, ones).abs().max() < 1e-12


@pytest.mark.parametrize("case", FOREST_CASES)
def test_implicit_vjp_equals_the_tree_vjp_on_forests(case):
    """Both paths of the dual's backward: conjugate gradients on the Hessian (any graph) and
    the tree VJP (forests) give the same gradient at the optimum."""
    inst = random_graph_instance(case, batch=3, seed=2, scale=3.0)
    probs = exact_attention(inst.scores, inst.h, inst.temps)
    _, cond = ca.dual.dual_probs(inst.scores, ca.solve(inst.scores, inst.h, "exact", temperature=inst.temps).duals,
                                 inst.h, inst.temps)
    grads = [torch.randn_like(p) for p in probs]
    tree = tree_backward(inst.h, probs, cond, inst.temps, grads)
    for dense_limit in (10 ** 6, 0):  # Cholesky-preconditioned and block-Jacobi conjugate gradients
        implicit = implicit_vjp(inst.h, probs, inst.temps, grads, dense_limit=dense_limit)
        for a, b in zip(implicit, tree):
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


def test_solve_psd_both_preconditioners_agree_and_stay_mean_zero():
    inst = random_graph_instance("mixed-two-resolutions", batch=3, seed=3, scale=2.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12)
    hess = get_hessian(inst.h, "cpu")
    rhs = hess.centre(torch.randn(3, hess.dim, dtype=torch.float64))
    w1, res1, it1, ok1 = solve_psd(hess, sol.probs, inst.temps, rhs, 1e-11, 1000)
    w2, res2, it2, ok2 = solve_psd(hess, sol.probs, inst.temps, rhs, 1e-11, 1000, dense_limit=0)
    assert ok1.all() and ok2.all() and (res1 <= 1e-11).all() and (res2 <= 1e-11).all()
    assert (it1 <= 3).all() and (it2 > it1).all()
    torch.testing.assert_close(w1, w2, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(hess.matvec(sol.probs, inst.temps, w1), rhs, atol=1e-10, rtol=0)
    for part in hess.split(w1):
        assert part.flatten(1).mean(1).abs().max() < 1e-12


def test_an_unsolvable_system_raises_naming_the_samples(monkeypatch):
    from convex_attention import hessian as hessian_module

    monkeypatch.setattr(hessian_module, "DENSE_FALLBACK_LIMIT", 0)  # else the dense retry solves it in one iteration
    inst = random_graph_instance("axial", batch=2, seed=4, scale=3.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12)
    grads = [torch.randn_like(p) for p in sol.probs]
    with pytest.raises(ImplicitSolveError, match=r"sample\(s\) \[0, 1\]: conjugate gradients reached relative "
                                                 r"residual .* after 1 iterations.*raise the temperatures.*"
                                                 r"-log\(p \+ eps\) rather than -log p") as refused:
        implicit_vjp(inst.h, sol.probs, inst.temps, grads, max_iter=1, dense_limit=0)
    assert "solve in float64" not in str(refused.value)  # it is float64 (ca_rev83's near-miss)
    best = float(re.search(r"relative residual (\S+) at best", str(refused.value)).group(1))
    assert 0 < best <= 1  # every attempt starts at relative residual 1


def _diamond():
    """Two paths from map 0 to map 3 that pool it the same way (onto two cells): constraints
    with redundancy beyond the gauge, so the Hessian is singular on the mean-zero subspace.
    (A review: the diamond onto a single cell this was had none, an edge into a one-cell map
    carrying only its gauge.)"""
    return ca.Graph([(4, 4), (2, 2), (2, 2), (2, 1)], [(0, 1), (0, 2), (1, 3), (2, 3)])


def test_a_redundant_diamond_is_solved_and_differentiated():
    h = _diamond()
    g = torch.Generator().manual_seed(5)
    scores = [2 * torch.randn((2,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    temps = [0.7, 1.3, 0.9, 2.0]
    sol = ca.solve(scores, h, "dual", temperature=temps, tol=1e-12)
    ref_p, _, ref_v = reference_solve(h, scores, temps)
    for got, want in zip(flat_np(sol.probs), ref_p):
        np.testing.assert_allclose(got, want, atol=REFERENCE_ATOL["probs"], rtol=0)
    np.testing.assert_allclose(sol.objective.numpy(), ref_v, atol=REFERENCE_ATOL["objective"], rtol=0)
    # gradcheck on the first sample: the redundancy is the graph's, in every sample (the batched
    # implicit backward has gradchecks of its own); each input entry costs two solves
    leaves = [s[:1].clone().requires_grad_() for s in scores]
    assert torch.autograd.gradcheck(lambda *s: tuple(ca.solve(list(s), h, "dual", temperature=temps, tol=1e-13).probs),
                                    leaves, atol=1e-6, rtol=1e-5)


def test_dense_hessians_in_chunks_of_samples_give_the_same_answers(monkeypatch):
    import convex_attention.hessian as hessian_module

    inst = random_graph_instance("grid-regions", batch=5, seed=6, scale=3.0)
    w = [torch.randn_like(s) for s in inst.scores]

    def run():
        scores = [s.clone().requires_grad_() for s in inst.scores]
        sol = ca.solve(scores, inst.h, "dual", temperature=inst.temps, tol=1e-11)
        grads = torch.autograd.grad(sum((p * x).sum() for p, x in zip(sol.probs, w)), scores)
        return sol, grads

    whole, whole_grads = run()
    dim = get_hessian(inst.h, "cpu").dim
    monkeypatch.setattr(hessian_module, "DENSE_ENTRIES", 2 * dim * dim)
    assert len(hessian_module.dense_chunks(5, dim)) == 3
    chunked, chunked_grads = run()
    assert torch.equal(whole.info["iterations"], chunked.info["iterations"])
    for a, b in zip(whole.probs + list(whole_grads), chunked.probs + list(chunked_grads)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def _degenerate_mixed_instance():
    """The graph benchmark's one failed backward (docs/benchmarks.md, "Gradients"): a mixed
    graph at 16², temperatures 0.107 … 0.283, probabilities down to 1e-75; rebuilt from its seed."""
    from convex_attention.bench import graph_targets

    scale, log_tau = graph_targets.GRADIENT_SETTINGS["normal"]
    g = torch.Generator().manual_seed(1)
    for _ in range(2):  # the benchmark's draw 1: each draw also takes its weights and direction
        h, scores, temps = graph_targets.draw_instance("mixed", 16, g, log_tau, 1, scale=scale)
        weights = [torch.randn(s.shape, generator=g, dtype=torch.float64) for s in scores]
        direction = [torch.randn(s.shape, generator=g, dtype=torch.float64) for s in scores]
    return h, scores, temps, weights, direction


def test_a_nearly_degenerate_solution_is_differentiated_at_the_rounding_floor():
    """Its Hessian has condition 2e7 and blocks of probability below 1e-60.  The matrix-free
    product used to keep 1e-9 of the right-hand side in rounding (``y_m − <p, y>`` at cells of
    probability near one), so the default tolerance 1e-10 was unverifiable and the solve was
    accepted at its rounding floor; formed cancellation-free (:meth:`DualHessian.apply_J`) it
    reaches 1e-12, and the gradient agrees with central differences."""
    h, scores, temps, weights, direction = _degenerate_mixed_instance()
    assert min(temps) < 0.11 and max(temps) < 0.3

    def loss(x):
        sol = ca.solve(x, h, "dual", temperature=temps, tol=1e-13, max_iter=5000)
        return sum((p * w).sum() for p, w in zip(sol.probs, weights)), sol

    leaves = [s.clone().requires_grad_() for s in scores]
    value, sol = loss(leaves)
    probs = [p.detach() for p in sol.probs]
    assert min(float(p.min()) for p in probs) < 1e-60
    hess = get_hessian(h, "cpu")
    rhs = hess.apply_At([DualHessian.apply_J(p, v, t) for p, v, t in zip(probs, weights, temps)])
    # reached at 1e-12, 500 times below the old product's floor (relative residuals of 4.9e-10 to
    # 1e-9 were measured at 1e-10 under different kernels, before the product was cancellation-free)
    _, relres, _, solved = solve_psd(hess, probs, temps, rhs, 1e-12, 1000)
    assert bool(solved.all()) and float(relres.max()) <= 1e-12
    grads = torch.autograd.grad(value, leaves)
    along = float(sum((gk * d).sum() for gk, d in zip(grads, direction)))
    # The derivative is small (2e-8), so a central difference at a small step sits in the
    # forward solves' rounding: at step 1e-3 it was off by 1.7e-4 on one CPU and by 1e-5 on
    # another, and not monotone in the step. Richardson's extrapolation of the steps 1e-2
    # and 5e-3 cancels the O(step²) error instead (2.7e-6 on one machine, 5e-7 to 3e-5 on another
    # under different CPU kernels; the steps alone: 1.2e-3, 2.9e-4); a wrong backward is off by O(1).
    def central(step: float) -> float:
        with torch.no_grad():
            return float(loss([s + step * d for s, d in zip(scores, direction)])[0]
                         - loss([s - step * d for s, d in zip(scores, direction)])[0]) / (2 * step)

    reference = (4 * central(5e-3) - central(1e-2)) / 3
    assert abs(along - reference) <= 1e-3 * abs(reference)


@pytest.mark.slow  # a second forward solve of the degenerate instance at tol 1e-13 (1.1 s)
def test_a_stalled_solve_above_its_rounding_floor_is_not_solved(monkeypatch):
    """The degenerate system, asked for a relative residual of 1e-16, stalls below √eps above
    it: accepted at the default floor, refused once the floor is set far below the residual's
    true rounding.  Accepting every stalled solve below √eps, whatever its true residual, passed
    every test (found by mutation testing).  (With the product's old rounding the stall was at
    8.1e-10 for a tolerance of 1e-12; cancellation-free it is at 3.5e-16.)"""
    import convex_attention.hessian as hessian_module

    h, scores, temps, weights, _ = _degenerate_mixed_instance()
    probs = ca.solve(scores, h, "dual", temperature=temps, tol=1e-12, max_iter=5000).probs
    hess = get_hessian(h, "cpu")
    rhs = hess.apply_At([DualHessian.apply_J(p, v, t) for p, v, t in zip(probs, weights, temps)])
    # stopped at the stall: where an iteration that goes on from it drifts is the CPU's rounding (below 1e-14 on
    # an Intel Xeon; to 0.098 on an AMD EPYC, where a stall acceptance that ignored the floor went unseen)
    _, relres, _, solved = solve_psd(hess, probs, temps, rhs, 1e-16, 1000, stop_stalled=True)
    assert bool(solved.all()) and float(relres.max()) > 1e-16  # by the floor
    monkeypatch.setattr(hessian_module, "ROUNDING_UNITS", 1e-3)
    _, relres, _, solved = solve_psd(hess, probs, temps, rhs, 1e-16, 1000, stop_stalled=True)
    # stalled below √eps, and refused (the true residual, reported since ca_rev81)
    assert not bool(solved.any()) and float(relres.max()) < 1e-14


def test_the_rounding_floor_accepts_no_unsolved_system():
    """A system stopped after one block-Jacobi iteration is far above its floor and refused."""
    inst = random_graph_instance("mixed-two-resolutions", batch=3, seed=3, scale=2.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12)
    hess = get_hessian(inst.h, "cpu")
    rhs = hess.centre(torch.randn(3, hess.dim, dtype=torch.float64))
    w, relres, _, solved = solve_psd(hess, sol.probs, inst.temps, rhs, 1e-11, 1, dense_limit=0)
    floor = hess.rounding_floor(sol.probs, inst.temps, w, rhs)
    residual = (hess.matvec(sol.probs, inst.temps, w) - rhs).norm(dim=1)
    assert not bool(solved.any()) and bool((residual > floor).all())
    # the fused form the solver uses (A w computed once) gives the same two numbers
    fused_residual, fused_floor = hess.residual_and_floor(sol.probs, inst.temps, w, rhs)
    torch.testing.assert_close(fused_residual, residual, rtol=1e-12, atol=0)
    torch.testing.assert_close(fused_floor, floor, rtol=1e-12, atol=0)


def test_the_floor_waits_for_a_stall_and_is_not_used_in_float32(monkeypatch):
    """With a floor that every residual is under, a float64 solve still converging goes on to
    machine precision instead of stopping at √eps; in float32 a solve is accepted by its
    tolerance alone (there the floor was up to 500× the real rounding), so with tolerance 0
    it never is."""
    import convex_attention.hessian as hessian_module
    from convex_attention.bench.graph_targets import draw_instance

    h, scores, temps = draw_instance("axial", 32, torch.Generator().manual_seed(0), (-1.0, 1.0), 2, scale=2.0)
    sol = ca.solve(scores, h, "dual", temperature=temps, tol=1e-12)
    hess = get_hessian(h, "cpu")
    rhs = hess.centre(torch.randn(2, hess.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    _, relres, _, _ = solve_psd(hess, sol.probs, temps, rhs, 0.0, 6, dense_limit=0)
    assert 1e-12 < float(relres.min()) and float(relres.max()) < 1e-6  # below √eps, still converging
    monkeypatch.setattr(hessian_module, "ROUNDING_UNITS", 1e30)
    _, relres, iterations, solved = solve_psd(hess, sol.probs, temps, rhs, 0.0, 1000, dense_limit=0)
    assert bool(solved.all()) and float(relres.max()) < 1e-14 and int(iterations.min()) > 6
    probs32 = [p.float() for p in sol.probs]
    _, relres, _, solved = solve_psd(hess, probs32, temps, rhs.float(), 0.0, 200, dense_limit=0)
    assert not bool(solved.any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cholesky_apply_solves_with_the_factor_per_sample(dtype):
    g = torch.Generator().manual_seed(4)
    M = torch.randn(5, 9, 9, generator=g, dtype=torch.float64)
    A = M @ M.transpose(1, 2) + 0.5 * torch.eye(9, dtype=torch.float64)  # well conditioned, one per sample
    rhs = torch.randn(5, 9, generator=g, dtype=torch.float64)
    want = torch.linalg.solve(A, rhs.unsqueeze(2)).squeeze(2)  # an independent solver, float64
    got = cholesky_apply(torch.linalg.cholesky(A.to(dtype)), rhs.to(dtype))
    assert got.shape == rhs.shape and got.dtype == dtype
    assert torch.allclose(got.double(), want, rtol=0, atol=1e-4 if dtype == torch.float32 else 1e-11)
    with pytest.raises(TypeError, match="one dtype"):
        cholesky_apply(torch.linalg.cholesky(A), rhs.float())


def test_a_system_conjugate_gradients_cannot_solve_is_solved_again_with_the_dense_hessian(monkeypatch):
    """Above DENSE_LIMIT the implicit backward had only block-Jacobi conjugate gradients, which
    left peaked instances at relative residual 1 after 1000 iterations (8 of 12 hard mixed
    instances at 160², D = 1600).  Up to DENSE_FALLBACK_LIMIT the samples it could not solve
    are solved again with the dense Hessian as the preconditioner.  Forced here at 32²
    (dense_limit=0); the reference is the dense solve."""
    from convex_attention import hessian as hessian_module

    (h, scores, temps), _ = peaked_mixed_instances()
    sol = ca.solve(scores, h, "dual", temperature=temps, tol=1e-12)
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in sol.probs]
    dense = implicit_vjp(h, sol.probs, temps, grads)
    fallen_back = implicit_vjp(h, sol.probs, temps, grads, dense_limit=0, max_iter=200)
    for got, want in zip(fallen_back, dense):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-7)
    # where the retry fails too (one iteration to 1e-14: neither reaches it), the error stands
    with pytest.raises(ImplicitSolveError, match=r"for sample\(s\) \[0\]: conjugate gradients reached relative "
                                                 r"residual .* at best .* after 4 iterations over all attempts "
                                                 r"\(with retries preconditioned by the dense Hessian, by the dense "
                                                 r"Hessian's pseudo-inverse and by the dense Hessian again, without "
                                                 r"the stall stop\); the Hessian is too ill-conditioned"):
        implicit_vjp(h, sol.probs, temps, grads, dense_limit=0, max_iter=1, rtol=1e-14)
    monkeypatch.setattr(hessian_module, "DENSE_FALLBACK_LIMIT", 0)  # conjugate gradients alone, as before
    # (200 iterations, to keep the test fast: they left relative residual 1 after 1000 too)
    with pytest.raises(ImplicitSolveError, match=r"could not solve the dual's Hessian system for sample\(s\) \[0\]"):
        implicit_vjp(h, sol.probs, temps, grads, dense_limit=0, max_iter=200)


def test_a_system_the_cholesky_factor_leaves_unsolved_is_solved_with_the_pseudo_inverse():
    """Instance 94 of the graph benchmark's mixed hard stream at 64² (every map at τ ≤ 0.056):
    the dual's Hessian (D = 256) has rank 18 to working precision, and conjugate gradients
    preconditioned by its ridged Cholesky factor stalled at relative residual 1e-7 to 4e-6, a
    gradient off by 2e-5 (measured), so its backward raised ImplicitSolveError.  The retry
    preconditioned by the pseudo-inverse solves it.  References: numpy's SVD pseudo-inverse of
    the dense Hessian, and central differences of the forward."""
    h, scores, temps = benchmark_instance(64, 94)
    sol = ca.solve(scores, h, "dual", temperature=temps, tol=1e-10)  # the benchmark's tolerance (at 1e-12 it is solved)
    g = torch.Generator().manual_seed(7)
    grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in sol.probs]
    got = implicit_vjp(h, sol.probs, temps, grads)

    hess = get_hessian(h, "cpu")
    rhs = hess.centre(hess.apply_At([DualHessian.apply_J(p, v, t) for p, v, t in zip(sol.probs, grads, temps)]))
    H = hess.dense(sol.probs, temps)[0].numpy()
    w = np.linalg.pinv(H, rcond=H.shape[0] * np.finfo(np.float64).eps, hermitian=True) @ rhs[0].numpy()
    aw = hess.apply_A(torch.from_numpy(w).unsqueeze(0))
    want = [DualHessian.apply_J(p, v if a is None else v - a, t) for p, v, t, a in zip(sol.probs, grads, temps, aw)]
    scale = torch.cat([x.flatten() for x in want]).norm()
    # pseudo-inverses whose cut-offs differ (D·eps ... 1e-10 relative) differ by 5e-8 to 6e-7 here:
    # the gradient's own conditioning (measured); the Cholesky-preconditioned answer, by 2e-5
    assert max_err(got, want) <= 1e-6 * float(scale)
    # the retry alone (implicit_vjp reaches it where the Cholesky solve fails, as at one thread)
    w_pinv, _, _, solved = solve_psd(hess, sol.probs, temps, rhs, 1e-10, 1000, spectral=True)
    assert solved.all()
    aw = hess.apply_A(w_pinv)
    via_pinv = [DualHessian.apply_J(p, v - a, t) for p, v, t, a in zip(sol.probs, grads, temps, aw)]
    assert max_err(via_pinv, want) <= 1e-6 * float(scale)

    # where the pseudo-inverse retry follows, the Cholesky-preconditioned solve stops at its stall
    # (at one thread it went on to max_iter = 1000 before, 0.6 s, and solved nothing; at two
    # threads its rounding differs, and it is accepted at its stall, 1.4e-8 against the cap 1.5e-8)
    _, _, iterations, _ = solve_psd(hess, sol.probs, temps, rhs, 1e-10, 1000, stop_stalled=True)
    assert int(iterations[0]) < 100

    directions = [torch.randn(s.shape, generator=g, dtype=torch.float64) for s in scores]

    def loss(step):
        # tol 1e-14: at 1e-13 one solve stopped at 6.5e-14 and moved the differences by 3e-5
        moved = ca.solve([s + step * u for s, u in zip(scores, directions)], h, "dual", temperature=temps, tol=1e-14)
        return float(sum((p * v).sum() for p, v in zip(moved.probs, grads)))

    def central(step):
        return (loss(step) - loss(-step)) / (2 * step)

    # central differences alone are 5e-4 off at step 1e-3; Richardson's extrapolation over 8e-3, 4e-3 and 2e-3
    # cancels the h² and h⁴ terms (what is left: 4e-8 to 2.1e-7 over five draws of the base scores 1e-13 apart
    # and three kernels).  Each loss comes from a solve stopped within tol 1e-14, so it moves by up to ~1e-14
    # where a solve stops elsewhere, which the extrapolation divides by its smallest step: over (1e-3, 5e-4),
    # as this test had it, 7.6e-6 of the derivative with ATEN_CPU_CAPABILITY=default against 3.2e-7 with the
    # AVX2 and AVX-512 kernels (rel 2e-6: the CPU's rounding; ca_rev220); from 2e-3, at most 1.8e-6
    c2, c4, c8 = central(2e-3), central(4e-3), central(8e-3)
    richardson = (16 * (4 * c2 - c4) - (4 * c4 - c8)) / 45
    analytic = float(sum((x * u).sum() for x, u in zip(got, directions)))
    # agreement 1.4-1.8e-7 at 1 and 2 threads; the Cholesky-preconditioned answer was off by 1.1e-5 (a gradient
    # scaled by 1 + 1.1e-5: 1.08e-5 to 1.10e-5 here)
    assert analytic == pytest.approx(richardson, rel=4e-6)


def test_a_retry_with_the_pseudo_inverse_stops_once_it_stalls_and_the_error_stands():
    """A system no solve can meet: a loss on the duals of the redundant diamond, part of it along
    the Hessian's null direction (the two paths' difference), which no ``w`` reaches.  The
    pseudo-inverse retry ran on to max_iter (1000 iterations) before; the part of the residual it
    leaves out cannot fall, so it stops once stalled, and the backward raises.  (Until the product
    was cancellation-free, instance 42 of the hard axial stream at 64² served here: its product's
    rounding was 10 % of the right-hand side; it is now solved, to 8e-10 of a 700-digit solve.)"""
    h = _diamond()
    g = torch.Generator().manual_seed(5)
    scores = [torch.randn((1,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    temps = [0.7, 1.3, 0.9, 2.0]
    sol = ca.solve(scores, h, "dual", temperature=temps, tol=1e-12)
    hess = get_hessian(h, "cpu")
    values, vectors = torch.linalg.eigh(hess.dense(sol.probs, temps)[0] + hess.gauge(torch.float64))
    assert float(values[0]) <= 1e-12 * float(values[-1])  # the null direction
    rhs = hess.centre(vectors[:, 0].unsqueeze(0) + torch.randn(1, hess.dim, generator=g, dtype=torch.float64))
    _, closest, iterations, solved = solve_psd(hess, sol.probs, temps, rhs, 1e-10, 1000, spectral=True)
    assert not solved.any() and int(iterations[0]) <= STALL_ITERATIONS + 3 and 0.1 < float(closest[0]) < 1
    # the error reports the closest any attempt came (at most the pseudo-inverse's), not the last one's
    with pytest.raises(ImplicitSolveError, match=r"for sample\(s\) \[0\]: conjugate gradients reached relative "
                                                 r"residual (\S+) at best .*\(with retries "
                                                 r"preconditioned by the dense Hessian's pseudo-inverse and by the "
                                                 r"dense Hessian again, without the stall stop\)") as raised:
        implicit_vjp(h, sol.probs, temps, [torch.zeros_like(p) for p in sol.probs], dual_grads=hess.split(rhs))
    reported = float(re.search(r"relative residual (\S+) at best", str(raised.value)).group(1))
    assert 0 < reported <= float(f"{float(closest[0]):.1e}")


def test_nan_in_an_incoming_gradient_gives_nan_for_its_sample_alone():
    """NaN in, NaN out, as autograd does, and never an ImplicitSolveError.  Before: a sample
    whose right-hand side was NaN counted as solved with w = 0, so a NaN on the duals alone,
    in a batch of one, gave a finite gradient (in a larger batch the NaN reached w through
    the other samples' updates)."""
    inst = random_graph_instance("axial", batch=3, seed=4, scale=2.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12)
    grads = [torch.randn_like(p) for p in sol.probs]
    clean = implicit_vjp(inst.h, sol.probs, inst.temps, grads)
    grads[0].view(3, -1)[1, 0] = math.nan
    dirty = implicit_vjp(inst.h, sol.probs, inst.temps, grads)
    for a, b in zip(dirty, clean):
        assert a[1].isnan().any()
        torch.testing.assert_close(a[[0, 2]], b[[0, 2]], rtol=1e-12, atol=1e-15)
    one = [p[:1] for p in sol.probs]
    on_duals = [torch.zeros_like(d[:1]) for d in sol.duals]
    on_duals[0].view(-1)[0] = math.nan
    out = implicit_vjp(inst.h, one, inst.temps, [torch.zeros_like(p) for p in one], dual_grads=on_duals)
    assert all(o.isnan().all() for o in out)


def test_the_backward_factorises_up_to_the_fallbacks_cap(monkeypatch):
    """Between DENSE_LIMIT and DENSE_FALLBACK_LIMIT the backward's first solve is preconditioned
    by the Cholesky factor, not block-Jacobi: at D = 1600 (160² mixed) one factorisation took
    the median backward from 332 to 92 ms (measured).  With the fallback off (its cap 0, as
    benchmarks/ablate_newton.py --ablate fallback sets it) the limit is DENSE_LIMIT, as before."""
    from convex_attention import hessian as hessian_module

    inst = random_graph_instance("mixed", batch=2, seed=3, scale=2.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12)
    grads = [torch.randn_like(p) for p in sol.probs]
    dim = get_hessian(inst.h, "cpu").dim
    monkeypatch.setattr(hessian_module, "DENSE_LIMIT", dim - 1)  # this graph now lies above it
    limits = []
    solve = hessian_module.solve_psd

    def recording(*args, **kwargs):
        limits.append(args[6] if len(args) > 6 else kwargs.get("dense_limit"))
        return solve(*args, **kwargs)

    monkeypatch.setattr(hessian_module, "solve_psd", recording)
    want = implicit_vjp(inst.h, sol.probs, inst.temps, grads, dense_limit=dim)
    got = implicit_vjp(inst.h, sol.probs, inst.temps, grads)
    assert limits[-1] == hessian_module.DENSE_FALLBACK_LIMIT >= dim
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    monkeypatch.setattr(hessian_module, "DENSE_FALLBACK_LIMIT", 0)
    implicit_vjp(inst.h, sol.probs, inst.temps, grads)
    assert limits[-1] == dim - 1


def _dense_At(hess, dtype=torch.float64):
    """Per map, ``A_kᵀ`` as a dense ``(D, n_k)`` matrix (None for a map without edges), from
    products with the identity."""
    return [None if a is None else a.reshape(hess.dim, -1)
            for a in hess.apply_A(torch.eye(hess.dim, dtype=dtype))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_rounding_floor_is_the_documented_bound(dtype):
    """``ROUNDING_UNITS · eps · (‖ |A|ᵀ z ‖ + ‖rhs‖)`` per sample, with the dtype's own eps and
    ``z = p ∘ (|y'| + |<p, y'>| + (1 − 2p) ∘ |y| + <p, |y|>) / τ`` (``y = A x``, ``y' = y − y_m`` at
    the most probable cell ``m``: the terms the cancellation-free product forms, and ``y``'s own
    rounding carried through ``J``); here with dense ``|A|`` built from products with the identity."""
    from convex_attention.hessian import ROUNDING_UNITS

    inst = random_graph_instance("mixed-two-resolutions", batch=2, seed=8, scale=2.0)
    hess = get_hessian(inst.h, "cpu")
    probs = [p.to(dtype) for p in reparameterized_probs(inst.scores, _random_duals(inst.h, 2, 9), inst.h, inst.temps)]
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, hess.dim, generator=g, dtype=torch.float64).to(dtype)
    rhs = torch.randn(2, hess.dim, generator=g, dtype=torch.float64).to(dtype)
    size = torch.zeros(2, hess.dim, dtype=torch.float64)
    for At, p, t in zip(_dense_At(hess), probs, inst.temps):
        if At is None:
            continue
        p = p.reshape(2, -1).double()
        ax = x.double() @ At  # (A x) per sample, (2, n_k)
        shifted = ax - ax.gather(1, p.argmax(1, keepdim=True))
        formed = shifted.abs() + (p * shifted).sum(1, keepdim=True).abs()
        carried = ((1 - 2 * p) * ax.abs() + (p * ax.abs()).sum(1, keepdim=True)).clamp_min(0)
        size += (p * (formed + carried) / t) @ At.abs().T
    want = ROUNDING_UNITS * torch.finfo(dtype).eps * (size.norm(dim=1) + rhs.double().norm(dim=1))
    got = hess.rounding_floor(probs, inst.temps, x, rhs)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)


def _gauged(hess, spectrum, seed):
    """``(K, H)``: a symmetric ``K = Q diag(spectrum) Qᵀ`` and ``H = K − scale·gauge``, with ``scale``
    chosen so that ``H + (mean diagonal of H)·gauge = K`` (what factor and pseudo_inverse add)."""
    Q, _ = torch.linalg.qr(torch.randn(hess.dim, hess.dim, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    K = (Q * spectrum) @ Q.T
    G = hess.gauge(torch.float64)
    scale = K.diagonal().mean() / (1 + G.diagonal().mean())
    return K, K - scale * G


def test_factor_bumps_the_ridge_per_sample_and_reports_failures():
    """Cholesky factors of ``H + scale·(gauge + ridge·I)``, per sample; a sample where it fails gets
    a larger ridge, and the others keep their factor; ``ok`` is False where none was found."""
    hess = get_hessian(_diamond(), "cpu")
    D = hess.dim
    g = torch.Generator().manual_seed(11)
    good = torch.rand(D, generator=g, dtype=torch.float64) + 0.5
    slightly = good.clone()
    slightly[0] = -1e-10 * float(good.mean())  # a ridge of 1e-12 x scale does not fix it, 1e-9 x scale does
    badly = good.clone()
    badly[0] = -float(good.mean())
    pairs = [_gauged(hess, s, seed) for s, seed in ((good, 1), (100 * slightly, 2), (badly, 3))]
    K = torch.stack([k for k, _ in pairs])
    L, ok = hess.factor(torch.stack([h for _, h in pairs]))
    assert ok.tolist() == [True, True, False]
    alone, ok0 = hess.factor(pairs[0][1].unsqueeze(0).clone())
    assert bool(ok0.all())
    torch.testing.assert_close(L[0], alone[0], rtol=1e-13, atol=0)  # not re-factorised with the others' ridge
    eye = torch.eye(D, dtype=torch.float64)
    torch.testing.assert_close(L[0] @ L[0].T, K[0] + 1e-12 * K[0].diagonal().mean() * eye, rtol=0, atol=1e-12)
    # the second sample's factor: of K plus a ridge above 1e-12 and at most 1e-6 times its scale
    ridge = torch.linalg.eigvalsh(L[1] @ L[1].T - K[1])
    scale = float(K[1].diagonal().mean()) / (1 + float(hess.gauge(torch.float64).diagonal().mean()))
    assert float(ridge.min()) > 1e-11 * scale and float(ridge.max()) < 2e-6 * scale


def test_pseudo_inverse_leaves_out_the_null_directions_per_sample():
    """The pseudo-inverse of ``H + scale·gauge`` per sample, eigenvalues at most ``D·eps`` of the
    largest left out; the reference is numpy's pseudo-inverse with that cut-off, and each sample
    of a batch is what it is alone (samples at scales 100x apart)."""
    hess = get_hessian(_diamond(), "cpu")
    D = hess.dim
    g = torch.Generator().manual_seed(12)
    spectra = [torch.rand(D, generator=g, dtype=torch.float64) + 0.1 for _ in range(2)]
    for s in spectra:
        s[:3] = 0.0  # null to working precision
    spectra[1] *= 100.0
    pairs = [_gauged(hess, s, seed) for seed, s in enumerate(spectra)]
    V, inverse = hess.pseudo_inverse(torch.stack([h for _, h in pairs]))
    for b, (K, _) in enumerate(pairs):
        want = np.linalg.pinv(K.numpy(), rcond=D * np.finfo(np.float64).eps, hermitian=True)
        got = (V[b] * inverse[b]) @ V[b].T
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-9 * np.abs(want).max())
        assert int((inverse[b] == 0).sum()) == 3


def test_get_hessian_caches_per_graph_and_device():
    h = _diamond()
    hess = get_hessian(h, "cpu")
    assert get_hessian(h, torch.device("cpu")) is hess and hess.device == torch.device("cpu")
    other = get_hessian(h, "meta")  # the structure's tensors live on its device: one per device
    assert other is not hess and other.device == torch.device("meta")


def test_chunked_dense_solves_take_a_tolerance_per_sample(monkeypatch):
    """``rtol`` one per sample, ``(B,)``, with the batch split into chunks of dense Hessians:
    each chunk gets its own samples' tolerances, and the answers are those of one solve."""
    import convex_attention.hessian as hessian_module

    inst = random_graph_instance("mixed-two-resolutions", batch=5, seed=3, scale=2.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12)
    hess = get_hessian(inst.h, "cpu")
    rhs = hess.centre(torch.randn(5, hess.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(13)))
    rtol = torch.tensor([1e-3, 1e-11, 1e-3, 1e-11, 1e-11], dtype=torch.float64)
    whole = solve_psd(hess, sol.probs, inst.temps, rhs, rtol, 1000)
    monkeypatch.setattr(hessian_module, "DENSE_ENTRIES", 2 * hess.dim * hess.dim)
    assert len(hessian_module.dense_chunks(5, hess.dim)) == 3
    chunked = solve_psd(hess, sol.probs, inst.temps, rhs, rtol, 1000)
    assert torch.equal(whole[2], chunked[2]) and torch.equal(whole[3], chunked[3])
    for a, b in zip(whole[:2], chunked[:2]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    assert bool(chunked[3].all()) and bool((chunked[1] <= rtol).all())


def _dense_preconditioners_spied(monkeypatch, batch: int, seed: int):
    """A solved mixed instance, its Hessian, a centred right-hand side (seeded) and the list
    that records each dense preconditioner built: ``(name, number of samples)``, where name
    is ``"factor"`` (Cholesky) or ``"pseudo_inverse"``."""
    inst = random_graph_instance("mixed-two-resolutions", batch=batch, seed=3, scale=2.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12)
    hess = get_hessian(inst.h, "cpu")
    rhs = hess.centre(torch.randn(batch, hess.dim, dtype=torch.float64,
                                  generator=torch.Generator().manual_seed(seed)))
    calls = []
    for name in ("factor", "pseudo_inverse"):
        method = getattr(hess, name)
        monkeypatch.setattr(hess, name, lambda H, method=method, name=name: calls.append((name, len(H))) or method(H))
    return inst, sol, hess, rhs, calls


def test_the_dense_limit_is_inclusive(monkeypatch):
    """``D <= dense_limit``: the dense Hessian preconditions (its Cholesky factor, or with
    ``spectral`` its pseudo-inverse) at ``dense_limit = D``, block-Jacobi below."""
    inst, sol, hess, rhs, calls = _dense_preconditioners_spied(monkeypatch, batch=2, seed=14)
    for spectral, used in ((False, "factor"), (True, "pseudo_inverse")):
        calls.clear()
        w, _, iterations, solved = solve_psd(hess, sol.probs, inst.temps, rhs, 1e-11, 1000, hess.dim, spectral=spectral)
        assert calls == [(used, 2)] and bool(solved.all()) and int(iterations.max()) <= 3
        calls.clear()
        _, _, iterations, solved = solve_psd(hess, sol.probs, inst.temps, rhs, 1e-11, 1000, hess.dim - 1,
                                             spectral=spectral)
        assert calls == [] and bool(solved.all()) and int(iterations.min()) > 3


def test_a_zero_right_hand_side_is_solved_without_iterations():
    """A sample whose right-hand side is zero is solved, ``w = 0``, relative residual 0, and
    not iterated; in the implicit backward a zero incoming gradient gives a zero gradient."""
    inst = random_graph_instance("axial", batch=3, seed=4, scale=2.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12)
    hess = get_hessian(inst.h, "cpu")
    rhs = hess.centre(torch.randn(3, hess.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(15)))
    rhs[1] = 0.0
    w, relres, iterations, solved = solve_psd(hess, sol.probs, inst.temps, rhs, 1e-11, 1000, dense_limit=0)
    assert solved.tolist() == [True, True, True] and int(iterations[1]) == 0 and int(iterations.max()) > 0
    assert float(relres[1]) == 0.0 and bool((w[1] == 0).all())
    grads = [torch.randn_like(p) for p in sol.probs]
    for v in grads:
        v[1] = 0.0
    out = implicit_vjp(inst.h, sol.probs, inst.temps, grads, dense_limit=0)
    assert all(bool((o[1] == 0).all()) for o in out)


def test_a_solve_that_meets_its_tolerance_on_its_last_iteration_is_solved():
    """``max_iter`` iterations exactly as many as the slowest sample needs: its last iterate
    meets the tolerance, and it is solved."""
    inst = random_graph_instance("mixed-two-resolutions", batch=3, seed=3, scale=2.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12)
    hess = get_hessian(inst.h, "cpu")
    rhs = hess.centre(torch.randn(3, hess.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(16)))
    w, relres, iterations, solved = solve_psd(hess, sol.probs, inst.temps, rhs, 1e-10, 1000, dense_limit=0)
    assert bool(solved.all()) and bool((relres <= 1e-10).all())
    exact = int(iterations.max())
    w2, relres2, iterations2, solved2 = solve_psd(hess, sol.probs, inst.temps, rhs, 1e-10, exact, dense_limit=0)
    assert bool(solved2.all()) and torch.equal(iterations2, iterations) and torch.equal(w2, w)
    _, _, _, short = solve_psd(hess, sol.probs, inst.temps, rhs, 1e-10, exact - 1, dense_limit=0)
    assert not bool(short[iterations == exact].any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_error_names_every_sample_the_worst_residual_and_the_default_tolerance(monkeypatch, dtype):
    """The default tolerance is 1e-10 in float64 and 1e-5 in float32 (where the rounding floor
    is not used, and the message does not offer it); the residual reported is the worst of
    the unsolved samples'."""
    from convex_attention import hessian as hessian_module

    monkeypatch.setattr(hessian_module, "DENSE_FALLBACK_LIMIT", 0)  # the first solve alone
    inst = random_graph_instance("axial", batch=3, seed=4, scale=3.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12)
    probs = [p.to(dtype) for p in sol.probs]
    grads = [torch.randn(p.shape, generator=torch.Generator().manual_seed(17), dtype=dtype) for p in probs]
    hess = get_hessian(inst.h, "cpu")
    rhs = hess.apply_At([DualHessian.apply_J(p, v, t) for p, v, t in zip(probs, grads, inst.temps)])
    _, relres, _, solved = solve_psd(hess, probs, inst.temps, rhs, 0.0, 1, dense_limit=0)
    assert not bool(solved.any()) and float(relres.min()) < float(relres.max())
    tolerance = "1e-10, nor a stalled residual at its rounding error" if dtype == torch.float64 else "1e-05"
    with pytest.raises(ImplicitSolveError, match=rf"for sample\(s\) \[0, 1, 2\]: conjugate gradients reached "
                                                 rf"relative residual {float(relres.max()):.1e} at best "
                                                 rf"\(tolerance {tolerance}\) after 1 iterations;"):
        implicit_vjp(inst.h, probs, inst.temps, grads, max_iter=1, dense_limit=0)


def test_the_block_diagonal_is_each_edge_blocks_diagonal_part():
    """Edge ``e = (a → b)``'s block of ``∇²g`` is ``diag(P_e p_a / τ_a + p_b / τ_b)`` minus the
    rank-one terms ``p_b p_bᵀ / τ_b`` and ``(P_e p_a)(P_e p_a)ᵀ / τ_a``; checked against the dense
    Hessian (``P_e p_a = p_b − ∇g_e``, the gradient)."""
    inst = random_graph_instance("mixed", batch=2, seed=18, scale=2.0)
    hess = get_hessian(inst.h, "cpu")
    probs = reparameterized_probs(inst.scores, _random_duals(inst.h, 2, 19), inst.h, inst.temps)
    dense = hess.dense(probs, inst.temps)
    diagonal = hess.block_diagonal(probs, inst.temps)
    gradient = hess.split(hess.gradient(probs))
    assert all(inst.temps[a] != inst.temps[b] for a, b in inst.h.edges)
    for e, (a, b) in enumerate(inst.h.edges):
        lo, hi = hess.offsets[e], hess.offsets[e + 1]
        pb = probs[b].reshape(2, -1)
        pooled = pb - gradient[e].reshape(2, -1)
        want = dense[:, lo:hi, lo:hi] + (pb.unsqueeze(2) * pb.unsqueeze(1)) / inst.temps[b] \
            + (pooled.unsqueeze(2) * pooled.unsqueeze(1)) / inst.temps[a]
        torch.testing.assert_close(torch.diag_embed(diagonal[:, lo:hi]), want, rtol=1e-10, atol=1e-12)


def test_a_sample_without_a_cholesky_factor_is_solved_unpreconditioned(monkeypatch):
    """Where :meth:`DualHessian.factor` finds no factor (``ok`` False, its ``L`` meaningless),
    that sample's conjugate gradients run unpreconditioned; the others keep the factor."""
    inst = random_graph_instance("mixed-two-resolutions", batch=2, seed=3, scale=2.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12)
    hess = get_hessian(inst.h, "cpu")
    rhs = hess.centre(torch.randn(2, hess.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(20)))
    factor = hess.factor

    def failing(H):
        L, ok = factor(H)
        L[1], ok[1] = math.nan, False
        return L, ok

    monkeypatch.setattr(hess, "factor", failing)
    w, relres, iterations, solved = solve_psd(hess, sol.probs, inst.temps, rhs, 1e-11, 1000)
    assert bool(solved.all()) and bool(torch.isfinite(w).all()) and int(iterations[0]) <= 3 < int(iterations[1])
    torch.testing.assert_close(hess.matvec(sol.probs, inst.temps, w), rhs, atol=1e-9, rtol=0)


def test_a_right_hand_side_that_is_not_finite_is_not_iterated():
    """Its ``w`` is NaN, it is not solved, and it takes no iterations (nor the others' time)."""
    inst = random_graph_instance("mixed-two-resolutions", batch=2, seed=3, scale=2.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12)
    hess = get_hessian(inst.h, "cpu")
    rhs = hess.centre(torch.randn(2, hess.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(21)))
    rhs[1, 0] = math.nan
    w, _, iterations, solved = solve_psd(hess, sol.probs, inst.temps, rhs, 1e-11, 1000, dense_limit=0)
    assert solved.tolist() == [True, False] and int(iterations[1]) == 0 and bool(w[1].isnan().all())
    assert bool(torch.isfinite(w[0]).all())


def _zero_curvature_probs(dtype):
    """An axial graph (4x3 map pooled onto its rows and its columns) whose probabilities are
    exactly zero on row 0 of the fine map and on the row map's cell 0: edge 0's entry for that
    row has no curvature at all (its column of ``∇²g`` is zero)."""
    inst = random_graph_instance("axial", batch=2, seed=22, scale=2.0)
    probs = [p.clone() for p in reparameterized_probs(inst.scores, _random_duals(inst.h, 2, 23), inst.h, inst.temps)]
    rows = inst.h.parents(0)
    probs[0].view(2, -1)[:, rows == 0] = 0.0
    probs[1].view(2, -1)[:, 0] = 0.0
    probs = [(p / p.flatten(1).sum(1).view((-1,) + (1,) * (p.dim() - 1))).to(dtype) for p in probs]
    return inst, probs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_block_jacobi_copes_with_an_entry_without_curvature(dtype):
    """Where an edge's block diagonal is zero (probability exactly zero on both sides of a coarse
    cell, as underflow gives on peaked maps) the block-Jacobi preconditioner clamps it to the
    dtype's tiny rather than divide by zero; the system is in the Hessian's range (the dense
    preconditioner solves it in one iteration), so the solve stays finite and meets its
    tolerance.  Found by mutation testing: the centred right-hand side is not exactly zero on
    that entry (rounding, ~1e-17), and divided by tiny it was ~1e291 (relative residual inf
    after 3 iterations, float32 and float64; implicit_vjp raised above DENSE_FALLBACK_LIMIT).
    The preconditioner now takes the pseudo-inverse's 0 there."""
    inst, probs = _zero_curvature_probs(dtype)
    hess = get_hessian(inst.h, "cpu")
    assert float(hess.block_diagonal(probs, inst.temps).abs().min()) == 0.0
    v = [torch.randn(p.shape, generator=torch.Generator().manual_seed(24), dtype=torch.float64).to(dtype)
         for p in probs]
    rhs = hess.apply_At([DualHessian.apply_J(p, x, t) for p, x, t in zip(probs, v, inst.temps)])
    rtol = 1e-5 if dtype == torch.float32 else 1e-11
    w, relres, _, solved = solve_psd(hess, probs, inst.temps, rhs, rtol, 1000, dense_limit=0)
    assert bool(solved.all()) and bool(torch.isfinite(w).all()) and bool((relres <= rtol).all())
    torch.testing.assert_close(hess.matvec(probs, inst.temps, w), rhs, rtol=0,
                               atol=1e-4 if dtype == torch.float32 else 1e-10)


def test_the_tolerance_is_inclusive():
    """``‖∇²g w − rhs‖ <= rtol ‖rhs‖``: a tolerance exactly equal to the relative residual an
    iterate reaches (read from a first solve with tolerance 0) is met by that iterate."""
    inst = random_graph_instance("mixed-two-resolutions", batch=3, seed=3, scale=2.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12)
    hess = get_hessian(inst.h, "cpu")
    rhs = hess.centre(torch.randn(3, hess.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(25)))
    _, reached, iterations, solved = solve_psd(hess, sol.probs, inst.temps, rhs, 0.0, 4, dense_limit=0)
    assert not bool(solved.any()) and int(iterations.min()) == 4
    _, relres, _, solved = solve_psd(hess, sol.probs, inst.temps, rhs, reached.clone(), 4, dense_limit=0)
    assert bool(solved.all()) and torch.equal(relres, reached)


def test_a_batch_is_solved_as_its_samples_alone():
    """Samples that converge at different iterations: each stops, frozen, at its own, and its
    solution and iteration count are those of solving it alone."""
    inst = random_graph_instance("mixed-two-resolutions", batch=3, seed=3, scale=2.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12)
    hess = get_hessian(inst.h, "cpu")
    rhs = hess.centre(torch.randn(3, hess.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(26)))
    rtol = torch.tensor([1e-1, 1e-11, 5e-2], dtype=torch.float64)
    w, relres, iterations, solved = solve_psd(hess, sol.probs, inst.temps, rhs, rtol, 1000, dense_limit=0)
    assert bool(solved.all()) and len(set(iterations.tolist())) == 3
    for b in range(3):
        alone = solve_psd(hess, [p[b:b + 1] for p in sol.probs], inst.temps, rhs[b:b + 1], float(rtol[b]), 1000,
                          dense_limit=0)
        assert int(alone[2][0]) == int(iterations[b]) and bool(alone[3][0])
        torch.testing.assert_close(alone[0][0], w[b], rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(alone[1][0], relres[b], rtol=1e-8, atol=0)


def test_dense_solves_in_float32_and_float64_share_one_hessian():
    """One cached :class:`DualHessian` serves both dtypes: its gauge is rebuilt for a dtype it
    was not built in, so a float32 solve preconditioned by the dense Hessian works after a
    float64 one (and back)."""
    inst = random_graph_instance("mixed-two-resolutions", batch=2, seed=3, scale=2.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12)
    hess = get_hessian(inst.h, "cpu")
    rhs = hess.centre(torch.randn(2, hess.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(27)))
    for dtype, rtol in ((torch.float64, 1e-11), (torch.float32, 1e-5), (torch.float64, 1e-11)):
        probs = [p.to(dtype) for p in sol.probs]
        w, relres, iterations, solved = solve_psd(hess, probs, inst.temps, rhs.to(dtype), rtol, 1000)
        assert w.dtype == dtype and bool(solved.all()) and int(iterations.max()) <= 3
        assert hess.gauge(dtype).dtype == dtype


def test_chunked_dense_solves_keep_their_preconditioner(monkeypatch):
    """With the batch split into chunks of dense Hessians (here two: at most two samples at once),
    each chunk is preconditioned as the whole batch would be: by its pseudo-inverse with
    ``spectral`` (one eigendecomposition per chunk, no Cholesky factor), else by its Cholesky
    factor, up to the caller's ``dense_limit``."""
    import convex_attention.hessian as hessian_module

    inst, sol, hess, rhs, calls = _dense_preconditioners_spied(monkeypatch, batch=3, seed=28)
    monkeypatch.setattr(hessian_module, "DENSE_ENTRIES", 2 * hess.dim * hess.dim)  # two samples at once
    monkeypatch.setattr(hessian_module, "DENSE_LIMIT", 0)  # each chunk keeps the caller's dense_limit, not this
    for spectral, used in ((True, "pseudo_inverse"), (False, "factor")):
        calls.clear()
        _, relres, _, solved = solve_psd(hess, sol.probs, inst.temps, rhs, 1e-11, 1000, hess.dim, spectral=spectral)
        assert calls == [(used, 2), (used, 1)] and bool(solved.all()) and bool((relres <= 1e-11).all())


def _unsolvable_backward_message(monkeypatch, batch=2, **kwargs):
    """The message of the implicit backward with tolerance 0 and one iteration per attempt (which
    no attempt meets: the rounding floor waits for a stall)."""
    inst = random_graph_instance("mixed-two-resolutions", batch=batch, seed=3, scale=2.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12)
    grads = [torch.randn(p.shape, generator=torch.Generator().manual_seed(29), dtype=torch.float64)
             for p in sol.probs]
    dim = get_hessian(inst.h, "cpu").dim
    with pytest.raises(ImplicitSolveError) as raised:
        implicit_vjp(inst.h, sol.probs, inst.temps, grads, rtol=0.0, max_iter=1,
                     dense_limit=kwargs.pop("dense_limit", dim), **kwargs)
    return str(raised.value)


def test_the_retries_after_a_first_solve_factorised_at_its_limit(monkeypatch):
    """``dense_limit = D`` (inclusive): the first solve was preconditioned by the Cholesky factor,
    so the retries are the pseudo-inverse and the factor again, not a second Cholesky retry."""
    message = _unsolvable_backward_message(monkeypatch)
    assert ("after 3 iterations over all attempts (with retries preconditioned by the dense Hessian's "
            "pseudo-inverse and by the dense Hessian again, without the stall stop);") in message


def test_the_error_names_a_single_retry(monkeypatch):
    """With the Cholesky retry alone (RETRY_PRECONDITIONERS, read at call time) after block-Jacobi,
    the error names that one retry, without a dangling "and"."""
    from convex_attention import hessian as hessian_module

    monkeypatch.setattr(hessian_module, "RETRY_PRECONDITIONERS", ("cholesky",))
    message = _unsolvable_backward_message(monkeypatch, dense_limit=0)
    assert ("after 2 iterations over all attempts (with retries preconditioned by the dense Hessian);"
            in message)


def test_a_solve_that_cannot_progress_stops_at_its_stall_unsolved(monkeypatch):
    """A right-hand side outside the Hessian's range (the centred unit vector of an entry without
    curvature): no iteration reduces its residual.  With ``spectral``, or ``stop_stalled`` (also
    with the batch in chunks of dense Hessians), the solve stops once its residual has not halved
    over 3 iterations (STALL_ITERATIONS; docs/benchmarks.md) and is not solved; without either it
    runs to ``max_iter``.  A stalled residual above √eps is refused however large the rounding
    floor: the floor is a test for residuals below it only."""
    import convex_attention.hessian as hessian_module

    inst, probs = _zero_curvature_probs(torch.float64)
    hess = get_hessian(inst.h, "cpu")
    rhs = torch.zeros(2, hess.dim, dtype=torch.float64)
    rhs[:, 0] = 1.0  # edge 0's entry for row 0, which has no curvature
    rhs = hess.centre(rhs)
    assert float(hess.matvec(probs, inst.temps, rhs).abs().max()) < 1e-15  # a null direction of the Hessian
    for kwargs in (dict(spectral=True), dict(stop_stalled=True)):
        _, relres, iterations, solved = solve_psd(hess, probs, inst.temps, rhs, 1e-11, 20, **kwargs)
        # no progress: the relative residual stays at 1 (to the rounding of the norms' ratio)
        assert iterations.tolist() == [3, 3] and not bool(solved.any()) and float(relres.min()) >= 1.0 - 1e-12
    _, _, iterations, solved = solve_psd(hess, probs, inst.temps, rhs, 1e-11, 20)
    assert iterations.tolist() == [20, 20] and not bool(solved.any())
    monkeypatch.setattr(hessian_module, "ROUNDING_UNITS", 1e30)
    _, _, _, solved = solve_psd(hess, probs, inst.temps, rhs, 1e-11, 20, spectral=True)
    assert not bool(solved.any())
    monkeypatch.setattr(hessian_module, "DENSE_ENTRIES", hess.dim * hess.dim)  # one sample per chunk
    assert len(hessian_module.dense_chunks(2, hess.dim)) == 2
    _, _, iterations, solved = solve_psd(hess, probs, inst.temps, rhs, 1e-11, 20, stop_stalled=True)
    assert iterations.tolist() == [3, 3] and not bool(solved.any())


def test_factor_bumps_the_ridge_up_to_1e_6_of_the_scale():
    """A sample that a ridge of 1e-9 x scale leaves indefinite is still factorised, with a ridge
    of at most 1e-6 x scale (the largest :meth:`DualHessian.factor` tries), and reported ``ok``."""
    hess = get_hessian(_diamond(), "cpu")
    spectrum = torch.rand(hess.dim, generator=torch.Generator().manual_seed(30), dtype=torch.float64) + 0.5
    spectrum[0] = -1e-8 * float(spectrum.mean())
    K, H = _gauged(hess, spectrum, 4)
    L, ok = hess.factor(H.unsqueeze(0).clone())
    assert ok.tolist() == [True]
    ridge = torch.linalg.eigvalsh(L[0] @ L[0].T - K)
    scale = float(K.diagonal().mean()) / (1 + float(hess.gauge(torch.float64).diagonal().mean()))
    assert float(ridge.min()) > 1e-8 * scale and float(ridge.max()) < 2e-6 * scale


def test_pseudo_inverse_cuts_at_d_eps_of_the_largest_eigenvalue():
    """The cut-off is ``D·eps`` times the largest eigenvalue, not ``eps``: eigenvalues at 3·eps of
    the largest are left out (inverse 0), those at 3·D·eps are kept."""
    hess = get_hessian(_diamond(), "cpu")
    D, eps = hess.dim, torch.finfo(torch.float64).eps
    spectrum = torch.rand(D, generator=torch.Generator().manual_seed(31), dtype=torch.float64) + 0.5
    spectrum[-1] = 2.0  # the largest
    spectrum[:2] = 3 * eps * 2.0
    spectrum[2:4] = 3 * D * eps * 2.0
    _, H = _gauged(hess, spectrum, 5)
    _, inverse = hess.pseudo_inverse(H.unsqueeze(0))  # eigh's eigenvalues ascend: the smallest first
    assert bool((inverse[0][:2] == 0).all()) and bool((inverse[0][2:] > 0).all())


def test_the_error_names_the_first_ten_unsolved_samples(monkeypatch):
    """Twelve unsolved samples: the one-line error names the first ten."""
    message = _unsolvable_backward_message(monkeypatch, batch=12)
    assert f"for sample(s) {list(range(10))}: conjugate gradients" in message


def test_the_cholesky_solves_stop_at_their_stall_but_the_last_attempt(monkeypatch):
    """Where the pseudo-inverse retry follows, each Cholesky-preconditioned solve stops at its stall
    (``stop_stalled``), the pseudo-inverse's too, and the last attempt, the dense Hessian again, runs
    without that stop (as its description in the error says); a block-Jacobi first solve runs on."""
    from convex_attention import hessian as hessian_module

    solve = hessian_module.solve_psd
    calls = []

    def recording(*args, **kwargs):
        calls.append((args[6] if len(args) > 6 else kwargs.get("dense_limit"), kwargs.get("spectral", False),
                      kwargs.get("stop_stalled", False)))
        return solve(*args, **kwargs)

    monkeypatch.setattr(hessian_module, "solve_psd", recording)
    dim = get_hessian(random_graph_instance("mixed-two-resolutions", batch=2, seed=3).h, "cpu").dim
    for fallback in (hessian_module.DENSE_FALLBACK_LIMIT, dim):  # the cap is inclusive
        monkeypatch.setattr(hessian_module, "DENSE_FALLBACK_LIMIT", fallback)
        for dense_limit, first in ((dim, [(dim, False, True)]), (0, [(0, False, False), (fallback, False, True)])):
            calls.clear()
            _unsolvable_backward_message(monkeypatch, dense_limit=dense_limit)
            assert calls == first + [(fallback, True, True), (fallback, False, False)]


def test_the_documented_example_of_redundant_constraints_is_redundant():
    h = _diamond()
    g = torch.Generator().manual_seed(5)
    scores = [torch.randn((1,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    temps = [0.7, 1.3, 0.9, 2.0]
    sol = ca.solve(scores, h, "dual", temperature=temps, tol=1e-12)
    hess = get_hessian(h, "cpu")
    eig = torch.linalg.eigvalsh(hess.dense(sol.probs, temps)[0] + hess.gauge(torch.float64))
    assert float(eig[0]) <= 1e-10 * float(eig[-1])  # a null direction on the mean-zero subspace


# ---------------------------------------------------------------- review 37: wide temperature ratios
def _rev37_axial_reference(h, p0, temps, grads):
    """θ̄ of ``L = Σ_k <v_k, p_k>`` on an axial graph from the primal KKT system on map 0 alone
    (maps 1, 2 are its marginals), in float64: ``Q = τ_0 diag(1/p_0) + Σ_e P_eᵀ diag(τ_b/p_b) P_e``
    bordered by the simplex constraint.  At a hot map 0 ``Q`` is dominated by its diagonal and is
    well conditioned: no cancellation, independent of the dual's Hessian."""
    n = h.sizes[0]
    pools = []
    for e in range(h.num_edges):
        P = torch.zeros(h.sizes[h.edges[e][1]], n, dtype=torch.float64)
        P[h.parents(e), torch.arange(n)] = 1.0
        pools.append(P)
    p = p0.reshape(-1).double()
    Q = torch.diag(temps[0] / p)
    for P, (_, b) in zip(pools, h.edges):
        Q = Q + P.T @ torch.diag(temps[b] / (P @ p)) @ P
    v = grads[0].reshape(-1) + sum(P.T @ grads[b].reshape(-1) for P, (_, b) in zip(pools, h.edges))
    K = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    K[:n, :n], K[:n, n], K[n, :n] = Q, 1.0, 1.0
    t0 = torch.linalg.solve(K, torch.cat([v, v.new_zeros(1)]))[:n]
    return [t0] + [P @ t0 for P in pools]


def _rev37_case(shape, temps, seed, dtype=None):
    h = ca.Graph.axial(shape)
    gen = torch.Generator().manual_seed(seed)
    scores = [torch.randn((1,) + s, generator=gen, dtype=torch.float64) for s in h.shapes]
    grads = [torch.randn((1,) + s, generator=gen, dtype=torch.float64) for s in h.shapes]
    leaves = [s.clone().requires_grad_(True) for s in scores]
    tau = torch.tensor(temps, dtype=torch.float64, requires_grad=True)
    options = {} if dtype is None else {"dtype": dtype}
    sol = ca.solve(leaves, h, "dual", temperature=tau, tol=1e-12 if dtype is None else 1e-6, strict=True, **options)
    assert bool(sol.info["converged"].all())
    loss = sum((p * v).sum() for p, v in zip(sol.probs, grads))
    got = torch.autograd.grad(loss, leaves + [tau])
    p64 = ca.solve(scores, h, "dual", temperature=list(temps), tol=1e-13).probs
    want = _rev37_axial_reference(h, p64[0], temps, grads)
    want_tau = torch.stack([-(w * p.reshape(-1).log()).sum() for w, p in zip(want, p64)])
    top = max(float(w.abs().max()) for w in want)
    score_err = max(float((a.reshape(-1) - w).abs().max()) for a, w in zip(got[:-1], want)) / top
    # a temperature gradient the working dtype cannot resolve is NaN (TemperatureGradientWarning): not measured
    tau_err = float(torch.nan_to_num((got[-1] - want_tau).abs() / want_tau.abs(), nan=0.0).max())
    return score_err, tau_err


def test_rev37_wide_temperature_ratio_float64_gradient_is_right_or_raises():
    """A hot full map with cold marginals (axial): the implicit gradient in float64 must agree with
    an independent primal-KKT reference to 1e-3 of its largest entry, or the backward must raise
    ImplicitSolveError; a silently wrong gradient is the defect."""
    for shape in ((2, 3), (3, 3)):
        try:
            score_err, tau_err = _rev37_case(shape, (1e8, 1.0, 1e-3), seed=0)
        except ImplicitSolveError:
            continue
        assert score_err < 1e-3 and tau_err < 1e-3, (shape, score_err, tau_err)


@pytest.mark.filterwarnings("ignore::convex_attention.dual.TemperatureGradientWarning")
def test_rev37_float32_work_wide_temperature_ratio_gradient_is_right_or_raises():
    for seed in (0, 1):
        try:
            score_err, tau_err = _rev37_case((2, 3), (1e6, 1.0, 1.0), seed=seed, dtype=torch.float32)
        except ImplicitSolveError:
            continue
        assert score_err < 1e-2 and tau_err < 1e-2, (seed, score_err, tau_err)


def test_rev37_a_sample_its_dtype_cannot_resolve_does_not_take_a_resolvable_one_with_it(monkeypatch):
    """In one batch, a sample the refinement cannot settle is refused by name; the refinement
    still runs for the others, which are not named (the first version named every sample it
    had meant to refine once one was beyond rounding).  Sample 0 stands in for the hopeless one:
    no correction of it, nor the second solve that checks it, is solved (since ca_rev86 a sample
    is refused on what the refinement measures, never on the worst-case rounding bound before it)."""
    from convex_attention import hessian

    h = ca.Graph.axial((2, 3))
    gen = torch.Generator().manual_seed(0)
    scores = [torch.randn((2,) + s, generator=gen, dtype=torch.float64) for s in h.shapes]
    grads = [torch.randn((2,) + s, generator=gen, dtype=torch.float64) for s in h.shapes]
    temps = [1e4, 1.0, 1e-3]  # both samples need refining in float64, and both can be refined
    probs = ca.solve(scores, h, "dual", temperature=temps, tol=1e-12).probs
    hessian.implicit_vjp(h, probs, temps, grads)  # refined, and resolved: no error
    real = hessian.solve_psd

    def sample_0_unsolved(hess, probs, temps, rhs, rtol, *args, **kwargs):
        w, relres, iterations, solved = real(hess, probs, temps, rhs, rtol, *args, **kwargs)
        if isinstance(rtol, torch.Tensor) or kwargs.get("spectral"):  # a correction, or the second solve:
            solved = solved.clone()  # (their row 0 is sample 0 while that is refined)
            solved[0] = False
        return w, relres, iterations, solved

    monkeypatch.setattr(hessian, "solve_psd", sample_0_unsolved)
    with pytest.raises(ImplicitSolveError, match=r"sample\(s\) \[0\] to 1e-06"):
        hessian.implicit_vjp(h, probs, temps, grads)


# ---------------------------------------------------------------- review 38: the refinement itself
def _rev38_mixed_instance():
    """A 'mixed' graph at τ ≈ (1e-3, 1.6e-3, 1.6, 8.5), one sample, solved at the default tol:
    its implicit gradient is right to ~1e-8 of each map's own before any refinement."""
    h = make_graph("mixed", 3)
    g = torch.Generator().manual_seed(3)
    for _ in range(4):  # the fourth draw of temperatures (spread 10^±3) and scores
        u = 2 * torch.rand(h.num_maps, generator=g, dtype=torch.float64) - 1
        scores = [3 * torch.randn((3,) + s, generator=g, dtype=torch.float64)[2:] for s in h.shapes]
    temps = (10 ** (3.0 * u)).tolist()
    gg = torch.Generator().manual_seed(10)
    grads = [torch.randn((3,) + s, generator=gg, dtype=torch.float64)[2:] for s in h.shapes]
    probs = ca.solve(scores, h, "dual", temperature=temps).probs
    return h, probs, temps, grads


def _rev38_dense_reference(h, probs, temps, grads):
    """θ̄_k = J_k (v_k − A_k w), w from the pseudo-inverse of the dense Hessian (no CG, no refinement)."""
    hess = get_hessian(h, "cpu")
    centred = [v - (p * v).flatten(1).sum(1).view((-1,) + (1,) * (p.dim() - 1)) for p, v in zip(probs, grads)]
    rhs = hess.apply_At([DualHessian.apply_J(p, v, t) for p, v, t in zip(probs, centred, temps)])
    H = hess.dense(probs, temps)
    w = torch.stack([torch.linalg.pinv(H[i], hermitian=True, rtol=1e-14) @ rhs[i] for i in range(rhs.shape[0])])
    return [DualHessian.apply_J(p, v if a is None else v - a, t)
            for p, v, t, a in zip(probs, centred, temps, hess.apply_A(w))]


def test_rev38_refinement_does_not_refuse_a_gradient_that_was_already_right():
    h, probs, temps, grads = _rev38_mixed_instance()
    want = _rev38_dense_reference(h, probs, temps, grads)
    got = implicit_vjp(h, probs, temps, grads, max_iter=500)  # ImplicitSolveError before (at 1000 too)
    top = max(float(x.abs().max()) for x in want)
    for a, b in zip(got, want):
        assert float((a - b).abs().max()) <= 1e-6 * max(float(b.abs().max()), 1e-3 * top)


def test_rev38_refinement_does_not_run_corrections_to_max_iter(monkeypatch):
    from convex_attention import hessian

    h, probs, temps, grads = _rev38_mixed_instance()
    iterations = []
    real = hessian.solve_psd

    def counting(*args, **kwargs):
        result = real(*args, **kwargs)
        iterations.append(int(result[2].max()))
        return result

    monkeypatch.setattr(hessian, "solve_psd", counting)
    try:
        implicit_vjp(h, probs, temps, grads, max_iter=100)
    except ImplicitSolveError:
        pass
    assert sum(iterations) <= 30, iterations  # the first solve takes 1


# ---------------------------------------------------------------- review 81: solves accepted above rtol
def _rev81_axial(n, seed):
    """An axial n×n instance, peaked (τ ≈ 10^-2 .. 10^-0.5): one sample, solved at tol 1e-12."""
    h = ca.Graph.axial((n, n))
    gen = torch.Generator().manual_seed(seed)
    scale, lo = [1, 3, 6][seed % 3], [-2, -1.5, -1][seed % 3]
    scores = [scale * torch.randn((1,) + s, generator=gen, dtype=torch.float64) for s in h.shapes]
    temps = (10 ** (lo + torch.rand(h.num_maps, generator=gen, dtype=torch.float64))).tolist()
    grads = [torch.randn((1,) + s, generator=gen, dtype=torch.float64) for s in h.shapes]
    probs = ca.solve(scores, h, "dual", temperature=temps, tol=1e-12).probs
    return h, probs, temps, grads


def _rev81_mp_vjp(h, probs, temps, grads, dual=None, pseudo_inverse=False):
    """θ̄_k = J_k (v_k − A_k w), ∇²g w = Σ A_kᵀ J_k v_k (+ ū, the gradient on the duals ``dual``, ``(D,)``,
    centred per edge here) at the given probabilities (upcast exactly, then normalised), one sample, in 60-digit
    arithmetic (mpmath): A_k's entries are 0/±1, so nothing but the solve's rounding differs; a map without edges
    gets J_k v_k.  Normalised: ``diag p − p pᵀ`` at probabilities that sum to one only to rounding is
    ill-conditioned in them where a cell's is near one (``p_m − p_m²`` moves by eps as ``p_m`` does): on one-hot
    float64 maps the two references differed by 3x GRADIENT_RTOL (ca_rev89's first test; the backward forms
    the Jacobian at ``p`` normalised, :meth:`DualHessian.apply_J`).  ``pseudo_inverse``: ``w`` by the pseudo-inverse
    of the (gauged) Hessian, for a graph whose Hessian is singular beyond the gauge (ca_rev94's redundant diamond,
    ``dual`` in its range)."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 60
    hess = get_hessian(h, "cpu")
    D = hess.dim
    mats = [[[0] * D] * h.sizes[k] if a is None else a.reshape(D, -1).T.to(torch.int64).tolist()
            for k, a in enumerate(hess.apply_A(torch.eye(D, dtype=torch.float64)))]
    ps = [[mp.mpf(float(x)) for x in p.double().reshape(-1)] for p in probs]
    ps = [[x / mp.fsum(p) for x in p] for p in ps]
    vs = [[mp.mpf(float(x)) for x in v.double().reshape(-1)] for v in grads]

    def J(p, y, t):
        inner = mp.fsum(a * b for a, b in zip(p, y))
        return [a * (b - inner) / mp.mpf(t) for a, b in zip(p, y)]

    H, rhs = mp.matrix(D, D), mp.matrix(D, 1)
    for A, p, v, t in zip(mats, ps, vs, temps):
        for j in range(D):
            col = J(p, [row[j] for row in A], t)
            for r in range(D):
                H[r, j] += mp.fsum(row[r] * c for row, c in zip(A, col) if row[r])
        jv = J(p, v, t)
        for r in range(D):
            rhs[r] += mp.fsum(row[r] * c for row, c in zip(A, jv) if row[r])
    u = None if dual is None else [mp.mpf(float(x)) for x in dual.double().reshape(-1)]
    for e in range(h.num_edges):
        lo, hi = hess.offsets[e], hess.offsets[e + 1]
        mean = 0 if u is None else mp.fsum(u[lo:hi]) / (hi - lo)
        for r in range(lo, hi):
            if u is not None:
                rhs[r] += u[r] - mean
            for c in range(lo, hi):
                H[r, c] += mp.mpf(1) / (hi - lo)
    if pseudo_inverse:  # its eigendecomposition, eigenvalues below 1e-40 of the largest dropped
        values, vectors = mp.eigsy(H)
        top = max(abs(x) for x in values)
        w = mp.matrix(D, 1)
        for i in range(D):
            if abs(values[i]) > mp.mpf("1e-40") * top:
                c = mp.fsum(vectors[r, i] * rhs[r] for r in range(D)) / values[i]
                for r in range(D):
                    w[r] += c * vectors[r, i]
    else:
        w = mp.lu_solve(H, rhs)
    out = []
    for A, p, v, t, shape in zip(mats, ps, vs, temps, h.shapes):
        aw = [mp.fsum(x * w[j] for j, x in enumerate(row) if x) for row in A]
        g = J(p, [a - b for a, b in zip(v, aw)], t)
        out.append(torch.tensor([float(x) for x in g], dtype=torch.float64).view((1,) + shape))
    return out


def test_rev81_a_solve_accepted_at_its_rounding_floor_still_gives_a_gradient_within_gradient_rtol():
    """The first solve stops at its rounding floor (relative residual 1.1e-8, 110× rtol); _refined screens
    samples assuming the solve reached rtol, so nothing is refined and map gradients come back 1.8e-6 (12²,
    seed 3) and 6.1e-6 (8², seed 33) of their own size off a 60-digit reference: above GRADIENT_RTOL (1e-6),
    with no ImplicitSolveError.  Either is acceptable: the gradient within 1e-6 per map, or the error."""
    from convex_attention.hessian import _held_to, _sizes

    for n, seed in ((12, 3), (8, 33)):
        h, probs, temps, grads = _rev81_axial(n, seed)
        want = _rev81_mp_vjp(h, probs, temps, grads)
        try:
            got = implicit_vjp(h, probs, temps, grads)
        except ImplicitSolveError:
            continue
        held = _held_to(_sizes(want), 1e-6)[0]
        errors = [float((a - b).abs().max() / held[k]) for k, (a, b) in enumerate(zip(got, want))]
        assert max(errors) <= 1e-6, (n, seed, errors)


def test_rev81_a_solved_system_meets_its_acceptance_test_on_the_true_residual():
    """solve_psd's contract: solved means ‖∇²g w − rhs‖ ≤ rtol ‖rhs‖, or a stalled residual at most √eps
    relative and below its rounding floor.  The tests are made on the recursively updated residual, which
    drifts from the true one: on axial 8², seed 33 (the backward's last attempt, Cholesky-preconditioned
    without the stall stop), 65 iterations end at a recursive 1.15e-8 ≤ √eps but a true 3.6e-7 (24× √eps)."""
    from convex_attention.hessian import _recentred

    h, probs, temps, grads = _rev81_axial(8, 33)
    hess = get_hessian(h, "cpu")
    centred = [_recentred(p, v) for p, v in zip(probs, grads)]
    rhs = hess.centre(hess.apply_At([DualHessian.apply_J(p, v, t) for p, v, t in zip(probs, centred, temps)]))
    w, _, _, solved = solve_psd(hess, probs, temps, rhs, 1e-10, 1000, 2048, spectral=False, stop_stalled=False)
    true, floor = hess.residual_and_floor(probs, temps, w, rhs)
    relres = float(true[0] / rhs[0].norm())
    ok = relres <= 1e-10 or (relres <= math.sqrt(torch.finfo(torch.float64).eps) and bool(true[0] <= floor[0]))
    assert not bool(solved[0]) or ok, (relres, float(true[0]), float(floor[0]))


# ----------------------------------------------------------------------------- ca_rev82 (strict xfail: known defects)

def test_ca_rev82_a_solve_that_never_stalled_is_not_accepted_at_its_rounding_floor():
    """6bbd401 re-checks each solve on its true residual: ``holds = true_relres <= rtol | (solved &
    true_relres <= √eps & true <= floor)``.  ``solved`` is the iteration's verdict, which includes a
    sample stopped because its *tracked* residual met rtol, not only one accepted by at_rounding (stalled),
    though the comment says 'only where the iteration had accepted it there' and the docstring and
    docs/math.md require a stall.  Axial 4², seed 14, rtol 1e-12: stopped after 2 iterations (a stall
    needs more than STALL_ITERATIONS), true relative residual 1.05e-12 > rtol, returned solved."""
    h, probs, temps, grads = _rev81_axial(4, 14)
    hess = get_hessian(h, "cpu")
    from convex_attention.hessian import _recentred

    centred = [_recentred(p, v) for p, v in zip(probs, grads)]
    rhs = hess.centre(hess.apply_At([DualHessian.apply_J(p, v, t) for p, v, t in zip(probs, centred, temps)]))
    w, relres, iterations, solved = solve_psd(hess, probs, temps, rhs, 1e-12, 1000, 2048)
    true, _ = hess.residual_and_floor(probs, temps, w, rhs)
    # fixed: stopped on the tracked residual, the solve restarts from the true one (a retry from 0
    # stops in the same place) and is accepted on the tolerance alone; never at the floor unstalled
    true_relres = float(true[0] / rhs[0].norm())
    assert not bool(solved[0]) or true_relres <= 1e-12, (true_relres, int(iterations[0]))
    assert float(relres[0]) == pytest.approx(true_relres, rel=1e-4)  # the true one, to its own rounding


# ----------------------------------------------------------------------------- ca_rev83 (strict xfail: known defects)
_rev83_mp_vjp = _rev81_mp_vjp  # (ca_rev83's copy of it, merged: the reviews' tests call it by this name)


def _rev83_wide_instance(case, seed, draw):
    """Draw ``draw`` of (hot, cold, score scale): per-map temperatures log-uniform between the two, the
    two ends pinned on two random maps, N(0, scale²) scores and N(0, 1) incoming gradients; 3 samples."""
    h = make_graph(case, seed)
    g = torch.Generator().manual_seed(seed)
    for hot, cold, scale in draw:
        u = torch.rand(h.num_maps, generator=g, dtype=torch.float64)
        temps = (cold * (hot / cold) ** u).tolist()
        perm = torch.randperm(h.num_maps, generator=g).tolist()
        temps[perm[0]], temps[perm[1]] = hot, cold
        scores = [scale * torch.randn((3,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
        grads = [torch.randn((3,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    return h, scores, temps, grads


def test_rev83_block_jacobi_float64_gradient_within_gradient_rtol_or_raises(monkeypatch):
    """implicit_vjp ("at a solution of any graph") on the 'disconnected' graph, τ ≈ (2.6e4, 4.0, 41, 0.01, 4.6,
    1e8): the conjugate-gradient solve (block-Jacobi, no dense fallback, as above DENSE_FALLBACK_LIMIT) meets
    rtol 1e-10 of the whole right-hand side, which the cold component dominates (ca.solve splits components;
    implicit_vjp does not), _refined's screen (cancelling
    × relative residual) sees nothing to refine, and maps 1-2 come back 7.0e-6 (sample 0) and 1.6e-5 (sample
    2) of their own size off a 50-digit solve, 16x GRADIENT_RTOL (1e-6), with no ImplicitSolveError; the
    dense path gets 5.7e-7.  The screen takes the relative residual for the relative error of A_k w, which
    the Hessian's conditioning multiplies.  Either the gradient within 1e-6 per map, or the error."""

    h, scores, temps, grads = _rev83_wide_instance("disconnected", 5, [(1e8, 1e-2, 1)])
    probs = ca.solve(scores, h, "dual", temperature=temps, tol=1e-12, strict=True).probs
    errors = _rev83_off_the_oracle_by_conjugate_gradients(monkeypatch, h, probs, temps, grads, 1e-6, (0, 2))
    assert errors is None or max(errors) <= 1e-6, errors


def test_rev83_block_jacobi_float32_gradient_within_gradient_rtol_or_raises(monkeypatch):
    """'mixed-two-resolutions', τ ≈ (1e5, 0.1, 5.0, 6.0), float32: the block-Jacobi solve stops at relative
    residual 9.0e-6 (rtol 1e-5); the largest cancelling/held ratio is 85, so the screen estimates 7.7e-4 < 1e-3
    and refines nothing; map 2's gradient is 7.9e-3 of itself off a 50-digit solve at the same (float32)
    probabilities, 8x GRADIENT_RTOL[float32] (1e-3), returned silently (the Hessian's condition on the
    mean-zero subspace is ~170; the dense path: 1.8e-5; rtol 1e-6: 4e-6).  Sample 0 of a 3-sample forward
    (a 1-sample forward lands on other probabilities, which do not show it).  Within 1e-3 per map, or the error."""

    h, scores, temps, grads = _rev83_wide_instance("mixed-two-resolutions", 6, [(1e3, 0.01, 1), (1e5, 0.1, 1)])
    sol = ca.solve([s.float() for s in scores], h, "dual", temperature=temps, tol=1e-6, strict=True)
    probs, v32 = [p[:1] for p in sol.probs], [v[:1].float() for v in grads]
    errors = _rev83_off_the_oracle_by_conjugate_gradients(monkeypatch, h, probs, temps, v32, 1e-3, (0,))
    assert errors is None or max(errors) <= 1e-3, errors


def _rev83_off_the_oracle_by_conjugate_gradients(monkeypatch, h, probs, temps, grads, tol, rows):
    """implicit_vjp on the conjugate-gradient path (dense limits 0): per sample of ``rows``, the largest map
    gradient's distance from the 60-digit oracle over what it is held to (tol of itself); None if refused."""
    from convex_attention import hessian
    from convex_attention.hessian import _held_to, _sizes

    monkeypatch.setattr(hessian, "DENSE_FALLBACK_LIMIT", 0)
    monkeypatch.setattr(hessian, "DENSE_LIMIT", 0)
    try:
        got = implicit_vjp(h, probs, temps, grads)
    except ImplicitSolveError:
        return None
    errors = []
    for b in rows:
        want = _rev83_mp_vjp(h, [p[b:b + 1] for p in probs], temps, [v[b:b + 1] for v in grads])
        held = _held_to(_sizes(want), tol)[0]
        errors.append(max(float((a[b:b + 1].double() - w).abs().max() / held[k])
                          for k, (a, w) in enumerate(zip(got, want))))
    return errors


# ----------------------------------------------------------------------------- ca_rev86
def test_rev86_the_restart_from_the_true_residual_never_leaves_it_higher():
    """solve_psd's restart (stopped on the tracked residual, restarted once from the true one) applied its
    correction whether or not it was solved: on axial 8², seed 33 (Cholesky-preconditioned, no stall stop,
    the backward's last attempt) the true relative residual went from 3.6e-7 to 7.0e-6 (max_iter 100) and
    2.7e-5 (1000), reported as the residual reached.  Kept only where it lowers the true residual (0acb2aa).
    Since the product is cancellation-free that float64 solve no longer drifts from its tracked residual (nor did
    450 others scanned); the float32 probabilities of seed 23 at rtol 1e-6 do: the restart is taken, and applied
    it took the true residual from 1.09e-6 to 2.14e-6."""
    from convex_attention.hessian import _recentred

    h, probs, temps, grads = _rev81_axial(8, 23)
    probs, grads = [p.float() for p in probs], [v.float() for v in grads]
    hess = get_hessian(h, "cpu")
    centred = [_recentred(p, v) for p, v in zip(probs, grads)]
    rhs = hess.centre(hess.apply_At([DualHessian.apply_J(p, v, t) for p, v, t in zip(probs, centred, temps)]))
    relres = {}
    for restart in (False, True):
        w, rel, _, _ = solve_psd(hess, probs, temps, rhs, 1e-6, 100, 2048, _restart=restart)
        true, _ = hess.residual_and_floor(probs, temps, w, rhs)
        relres[restart] = float(true[0] / rhs[0].norm())
        assert float(rel[0]) == pytest.approx(relres[restart], rel=1e-4)
    assert relres[False] > 1e-6  # the restart is taken: the tracked residual met rtol, the true one did not
    assert relres[True] <= relres[False], relres


def _rev86_backward_errors(case, seed, draw):
    """Each sample's largest map error over GRADIENT_RTOL (float64): ca.solve's backward (default settings, a
    3-sample batch) of Σ <v, p> against a 50-digit solve at the returned probabilities; None if it refuses."""
    from convex_attention.hessian import _held_to, _sizes

    h, scores, temps, grads = _rev83_wide_instance(case, seed, [draw])
    leaves = [s.clone().requires_grad_(True) for s in scores]
    sol = ca.solve(leaves, h, "dual", temperature=temps, tol=1e-12, strict=True)
    try:
        sum((p * v).sum() for p, v in zip(sol.probs, grads)).backward()
    except ImplicitSolveError:
        return None
    errors = []
    for b in range(3):
        want = _rev83_mp_vjp(h, [p.detach()[b:b + 1] for p in sol.probs], temps, [v[b:b + 1] for v in grads])
        held = _held_to(_sizes(want), 1e-6)[0]
        errors.append(max(float((s.grad[b:b + 1] - w).abs().max() / held[k]) / 1e-6
                          for k, (s, w) in enumerate(zip(leaves, want))))
    return errors


def test_rev86_a_factorised_solve_gradient_within_gradient_rtol_or_raises():
    """0acb2aa measures block-Jacobi samples by a correction because their relative residual does not bound the
    error, but keeps the factorised (dense Cholesky) first solve on the old screen, stating that its relative
    residual, times the terms that cancel, bounds its error.  It does not: the Hessian's conditioning multiplies
    a dense solve's residual too.  The default path (D = 10 <= DENSE_FALLBACK_LIMIT), through ca.solve's backward
    on the 'mixed' graph: seed 15, τ ≈ (1e-3, 0.45, 0.22, 1e4), scores N(0, 9): sample 1 solved at relative
    residual 5.1e-13, screened at 0.12 of the tolerance, map 2's gradient 6.4e-5 of itself off (64x GRADIENT_RTOL);
    seed 10, τ ≈ (0.01, 1e8, 1.3e5, 3.2e3): sample 1 screened at 0.52, map 2 1.7e-5 off (17x).  One correction
    brings both below 1e-8.  Either within GRADIENT_RTOL per map (of the sample's largest below its root), or
    ImplicitSolveError."""
    got = {(15, (1e4, 1e-3, 3)): _rev86_backward_errors("mixed", 15, (1e4, 1e-3, 3)),
           (10, (1e8, 1e-2, 1)): _rev86_backward_errors("mixed", 10, (1e8, 1e-2, 1))}
    assert all(e is None or max(e) <= 1 for e in got.values()), got


def test_rev86_block_jacobi_sample_with_an_unsolved_correction_within_gradient_rtol_or_raises(monkeypatch):
    """0acb2aa: a block-Jacobi sample whose correction is not solved is 'unmeasured' and judged on the old
    residual screen, the one ca_rev83 showed blind to block-Jacobi's error.  In float32 the correction, asked for
    rtol of a residual already at rtol of the right-hand side, stalls on most samples, so the blind spot is back.
    Dense limits at 0 (the path above DENSE_FALLBACK_LIMIT), float32, a 3-sample forward at tol 1e-6:
    'disconnected' seed 22, τ ≈ (5.1, 0.085, 0.011, 1e-3, 0.14, 10): sample 2's correction stalls at relative
    residual 5e-3, map 3 comes back 8.8e-3 of itself off a 50-digit solve (8.8x GRADIENT_RTOL[float32]);
    'mixed' seed 1, τ ≈ (0.041, 0.01, 2.2, 1e8): sample 0 (correction at 1.15), map 2 3.4e-3 off (3.4x)."""
    errors = {}
    for case, seed, draw, b in (("disconnected", 22, (10, 1e-3, 1), 2), ("mixed", 1, (1e8, 1e-2, 1), 0)):
        h, scores, temps, grads = _rev83_wide_instance(case, seed, [draw])
        probs = ca.solve([s.float() for s in scores], h, "dual", temperature=temps, tol=1e-6, strict=True).probs
        errors[case] = _rev83_off_the_oracle_by_conjugate_gradients(monkeypatch, h, probs, temps,
                                                                    [v.float() for v in grads], 1e-3, (b,))
    assert all(e is None or e[0] <= 1e-3 for e in errors.values()), errors


def test_rev86_a_block_jacobi_sample_is_measured_before_it_is_refused_as_beyond_rounding(monkeypatch):
    """0acb2aa sends every block-Jacobi sample to _refined's rows, and so through _beyond_rounding (eps ×
    cancelling > tol × held, a worst-case bound) before any correction: before, only samples the residual screen
    flagged met it.  Dense limits at 0, float32, a 3-sample forward at tol 1e-6: 'grid-regions' seed 15,
    τ ≈ (0.33, 100, 0.01), and 'disconnected' seed 21, τ ≈ (10, 2.4e-3, 0.14, 1e-3, 0.83, 8.6): sample 2 refused
    ('could not resolve'), where the code before returned it 0.21x and 0.24x GRADIENT_RTOL[float32] off a 50-digit
    solve, and where, let through, its correction is solved and settles it at the same.  New refusals of right
    gradients (the commit measured 'the same refusals').  Kept as a strict xfail until 2026-12-06: the refusal was
    needed while the gradient was formed in float32 (without it, gradients 3-330x off came back settled); the
    refinement now carries w, its residual and the gradient in float64, and the refusal is made at float64's
    rounding."""
    errors = {}
    for case, seed, draw in (("grid-regions", 15, (1e2, 1e-2, 3)), ("disconnected", 21, (10, 1e-3, 1))):
        h, scores, temps, grads = _rev83_wide_instance(case, seed, [draw])
        probs = ca.solve([s.float() for s in scores], h, "dual", temperature=temps, tol=1e-6, strict=True).probs
        errors[case] = _rev83_off_the_oracle_by_conjugate_gradients(monkeypatch, h, probs, temps,
                                                                    [v.float() for v in grads], 1e-3, (2,))
    assert all(e is not None and e[0] <= 1e-3 for e in errors.values()), errors  # returned, and right


# ----------------------------------------------------------------------------- ca_rev89 (strict xfail: known defects)
def _float64_off_the_oracle(case, seed, draw, sample, refusal_allowed=True):
    """Draw ``draw`` of ``case``/``seed`` (:func:`_rev83_wide_instance`) solved at tol 1e-12 in float64: the
    backward's error on ``sample`` over GRADIENT_RTOL (1e-6) against the 60-digit oracle, or None where it raises
    ImplicitSolveError (and ``refusal_allowed``)."""
    h, scores, temps, grads = _rev83_wide_instance(case, seed, [draw])
    probs = ca.solve(scores, h, "dual", temperature=temps, tol=1e-12, strict=True).probs
    try:
        got = implicit_vjp(h, probs, temps, grads)
    except ImplicitSolveError:
        if not refusal_allowed:
            raise
        return None
    return _rev89_error_over_tolerance(h, probs, temps, grads, got, sample, 1e-6)


def _rev89_error_over_tolerance(h, probs, temps, grads, got, b, tol):
    """The largest error of sample ``b``'s map gradients off a 60-digit solve, over ``tol`` × what each is held to."""
    from convex_attention.hessian import _held_to, _sizes

    want = _rev83_mp_vjp(h, [p[b:b + 1] for p in probs], temps, [v[b:b + 1] for v in grads])
    held = _held_to(_sizes(want), tol)[0]
    return max(float((a[b:b + 1].double() - w).abs().max() / held[k]) / tol for k, (a, w) in enumerate(zip(got, want)))


def test_rev89_an_unflagged_float64_sample_is_within_gradient_rtol_or_raises():
    """'mixed' seed 14, τ = 1 everywhere, N(0, 30²) scores (maps one-hot to 1e-12, cells down to 1e-41), float64,
    the default (dense Cholesky) path: sample 1's terms that cancel are at most 6.2x its maps' gradients, so
    cancelling × max(rtol, sqrt(eps)) = 9e-8 is under GRADIENT_RTOL × held and _refined neither corrects nor
    measures it; map 2 (held to sqrt(tol) of the sample's largest) comes back 3.15x its tolerance off a 60-digit
    (and a 120-digit) solve at the same probabilities.  The screen takes max(rtol, sqrt(eps)) for the relative
    error of A_k w, which the Hessian's conditioning (peaked maps) multiplies, on the unflagged samples too;
    forced through _refined (cancelling × 1e3) it comes back the same: the error is the float64 product's rounding,
    which no correction against that product sees.  Within 1e-6 per map, or ImplicitSolveError.
    Resolved (2026-12-06): the oracle's, not the backward's.  The oracle formed ``diag p − p pᵀ`` at probabilities
    that sum to one only to rounding, which is ill-conditioned in them at a cell near one (its ``p_m − p_m²``
    moves by eps as ``p_m`` does): at ``p`` normalised it is 0.105x the tolerance off (0.021x with the
    cancellation-free product), and the two oracles differ by 3.05x the tolerance."""
    error = _float64_off_the_oracle("mixed", 14, (1, 1, 30), 1)
    assert error is None or error <= 1, error


def test_rev89_a_float32_sample_settled_by_its_correction_is_within_gradient_rtol_or_raises():
    """'grid-regions' seed 2, τ = (10, 0.0195, 0.01), N(0, 20²) scores, float32 probabilities from a 3-sample
    forward at tol 1e-6, the default (dense) path: sample 2 is flagged (cancelling/held up to 2.7e3, under the
    beyond-rounding refusal's 1.6e4), its correction is solved (relative residual 1.8e-6, asked 1e-2) and moves no
    map's gradient by 1e-3, so it is settled; map 2 is 2.19x GRADIENT_RTOL[float32] off a 60-digit solve at the
    same probabilities.  The correction solves against the same float32 Hessian product as the first solve, so
    the error that product's rounding leaves in w (multiplied by the conditioning) is invisible to it (a residual
    formed in float64 would see it).  Within 1e-3 per map, or ImplicitSolveError.
    Resolved (2026-12-06): the product's own rounding, ``y_m − <p, y>`` at cells of probability near one; formed
    cancellation-free (:meth:`DualHessian.apply_J`) the gradient is 0.17x the tolerance off (2.15x before, against
    the normalised oracle)."""
    error = _rev89_float32_error_over_tolerance("grid-regions", 2, 2)
    assert error is None or error <= 1, error


def test_rev89_a_float32_sample_settled_by_the_second_opinion_is_within_gradient_rtol_or_raises():
    """'mixed' seed 9, τ ≈ (0.055, 10, 0.11, 0.01), N(0, 20²) scores, float32 probabilities from a 3-sample forward
    at tol 1e-6, the default (dense) path: every sample is flagged, no correction is solved (relative residuals
    1.0, 0.20, 0.22, asked 1e-2), and the second solve by the pseudo-inverse (relative residual 1.4e-6) agrees with
    the first to 1e-3, so all three are settled; sample 1's map 2 is 1.75x GRADIENT_RTOL[float32] off a 60-digit
    solve at the same probabilities.  The two solves share the float32 Hessian product, so they agree on its
    rounding's error (the code before 085c6ca refused this batch: sample 2 unresolved).  Within 1e-3 per map, or
    ImplicitSolveError."""
    error = _rev89_float32_error_over_tolerance("mixed", 9, 1)
    assert error is None or error <= 1, error


def _rev89_float32_error_over_tolerance(case, seed, sample):
    """Draw (10, 1e-2, 20) of ``case``/``seed`` in float32 (a 3-sample forward at tol 1e-6): the backward's error
    on ``sample`` over GRADIENT_RTOL[float32] against the 60-digit oracle, or None where it raises."""
    h, scores, temps, grads = _rev83_wide_instance(case, seed, [(10, 1e-2, 20)])
    probs = ca.solve([s.float() for s in scores], h, "dual", temperature=temps, tol=1e-6, strict=True).probs
    v32 = [v.float() for v in grads]
    try:
        got = implicit_vjp(h, probs, temps, v32)
    except ImplicitSolveError:
        return None
    return _rev89_error_over_tolerance(h, probs, temps, v32, got, sample, 1e-3)


def test_rev89_a_float64_sample_whose_second_opinion_agrees_is_not_refused():
    """'mixed' seed 10, τ = 1 everywhere, N(0, 30²) scores, float64, the default (dense) path: sample 2's first
    solve is accepted at its rounding floor (relative residual 6.5e-9); it is flagged (cancelling/held 76 > 66),
    its correction is not solved (1.26, asked 1e-3), and the second solve by the pseudo-inverse reaches 1.12e-10,
    58x below the first, whose gradients agree with the first's to 0.018 of GRADIENT_RTOL, and both are within
    0.02 of it off a 60-digit solve; but second_ok holds the second solve to rtol (1e-10), with no rounding-floor
    acceptance, so the sample is refused ('could not resolve').  The code before 085c6ca returned it 0.017x
    its tolerance off.  A new refusal of a right float64 gradient."""
    assert _float64_off_the_oracle("mixed", 10, (1, 1, 30), 2, refusal_allowed=False) <= 1


# ---------------------------------------------------------------- review 90: the float64 second opinion
def test_rev90_the_second_opinion_keeps_the_dual_gradients():
    """'mixed' seed 9 (D = 10), τ ≈ (0.055, 10, 0.11, 0.01), N(0, 20²) scores, float32 probabilities from a 3-sample
    forward at tol 1e-6, sample 0, with a loss on the duals too (ū = 1e-4 ∇²g z, z ~ N(0, 1): in the Hessian's range,
    its share of the gradient ~2.7 % of each map's): the sample is flagged, no correction is solved, and
    _second_opinion solves ∇²g w = Σ A_kᵀ J_k v_k without ū, so its gradients differ from the first's by
    ū's share (~27x GRADIENT_RTOL[float32]); the sample is refused ('could not resolve').  The first gradient is 0.10x
    its tolerance off a 60-digit solve of the whole system (with ū added to the second opinion's right-hand side
    it is returned as that).  Before 7c2f4b2 the second opinion solved rhs[rows], which holds ū."""
    h, scores, temps, grads = _rev83_wide_instance("mixed", 9, [(10, 1e-2, 20)])
    probs = [p[:1] for p in ca.solve([s.float() for s in scores], h, "dual", temperature=temps, tol=1e-6,
                                     strict=True).probs]
    v32 = [v[:1].float() for v in grads]
    hess = get_hessian(h, "cpu")
    z = torch.randn(1, hess.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = (1e-4 * hess.centre(hess.matvec([p.double() for p in probs], temps, z))).float()
    got = implicit_vjp(h, probs, temps, v32, dual_grads=hess.split(u))  # ImplicitSolveError on the current code
    want = _rev81_mp_vjp(h, probs, temps, v32, u[0])
    from convex_attention.hessian import _held_to, _sizes
    held = _held_to(_sizes(want), 1e-3)[0]
    assert max(float((a.double() - b).abs().max() / held[k]) for k, (a, b) in enumerate(zip(got, want))) <= 1e-3


# ----------------------------------------------------------------------------- the cancellation-free product
def test_the_jacobian_product_at_a_cell_near_one_keeps_its_relative_accuracy():
    """``J y = p ∘ (y − <p, y>) / τ`` at a cell of probability 1 − 1e-12: formed as written, ``y_m − <p, y>``
    cancels to 1e-12 of ``y_m`` and keeps ``eps·|y_m|`` of rounding, 1e-4 of the result in float64 (and all of
    it in float32).  Formed after ``y − y_m`` it is accurate to a few eps of itself, against exact rational
    arithmetic at the same probabilities (normalised)."""
    from fractions import Fraction

    for dtype, tol in ((torch.float64, 1e-13), (torch.float32, 1e-5)):
        g = torch.Generator().manual_seed(3)
        rest = torch.rand(1, 5, generator=g, dtype=torch.float64) * 2e-13
        p = torch.cat([1 - rest.sum(1, keepdim=True), rest], 1).to(dtype)
        y = torch.randn(1, 6, generator=g, dtype=torch.float64).to(dtype)
        got = DualHessian.apply_J(p, y, 0.7)
        ps = [Fraction(float(x)) for x in p[0].double()]
        ps = [x / sum(ps) for x in ps]
        ys = [Fraction(float(x)) for x in y[0].double()]
        inner = sum(a * b for a, b in zip(ps, ys))
        want = [float(a * (b - inner) / Fraction(0.7)) for a, b in zip(ps, ys)]
        for a, b in zip(got[0].double().tolist(), want):
            assert abs(a - b) <= tol * abs(b), (dtype, a, b)


def test_the_second_opinion_holds_a_float32_gradient_to_the_size_of_the_right_one():
    """'axial' seed 9, τ = (1e-3, 1e4, 0.25), N(0, 3²) scores, float32 probabilities from a 3-sample forward at
    tol 1e-6: sample 2's terms cancel 9e5-fold, its second correction (float32) cannot be solved, and the
    float64 second opinion was asked to agree within GRADIENT_RTOL of the sizes of the gradient as first formed
    in float32, which that rounding had made far too large: it agreed with a gradient 2.7x its tolerance off a
    60-digit solve.  Held to the smaller of the two answers' sizes: within 1e-3 per map, or the error."""
    h, scores, temps, grads = _rev83_wide_instance("axial", 9, [(1e4, 1e-3, 3)])
    probs = ca.solve([s.float() for s in scores], h, "dual", temperature=temps, tol=1e-6, strict=True).probs
    v = [x.float() for x in grads]
    try:
        got = implicit_vjp(h, probs, temps, v)
    except ImplicitSolveError:
        return
    assert _rev89_error_over_tolerance(h, probs, temps, v, got, 2, 1e-3) <= 1


def _mp_vjp_structured(h, probs, temps, grads, digits):
    """:func:`_rev81_mp_vjp` for larger maps: the Hessian built from its sparse and rank-one parts,
    ``Σ_k (A_kᵀ diag p_k A_k − (A_kᵀ p_k)(A_kᵀ p_k)ᵀ) / τ_k`` plus the gauge, at ``p`` normalised, in ``digits``
    digits (one sample; every map has an edge)."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = digits
    hess = get_hessian(h, "cpu")
    D = hess.dim
    A = [None if a is None else a.reshape(D, -1).T.to(torch.int64)
         for a in hess.apply_A(torch.eye(D, dtype=torch.float64))]
    H, rhs = mp.zeros(D, D), mp.zeros(D, 1)
    rows_of, normalised = [], []
    for Ak, p, v, t in zip(A, probs, grads, temps):
        ps = [mp.mpf(float(x)) for x in p.double().reshape(-1)]
        total = mp.fsum(ps)
        ps = [x / total for x in ps]
        normalised.append(ps)
        nz = [[(int(j), int(Ak[i, j])) for j in torch.nonzero(Ak[i]).flatten().tolist()] for i in range(Ak.shape[0])]
        rows_of.append(nz)
        tau = mp.mpf(t)
        u = [mp.mpf(0)] * D
        for i, row in enumerate(nz):
            for j, a in row:
                u[j] += a * ps[i]
                for j2, a2 in row:
                    H[j, j2] += a * a2 * ps[i] / tau
        touched = [j for j in range(D) if u[j] != 0]
        for j in touched:
            for j2 in touched:
                H[j, j2] -= u[j] * u[j2] / tau
        vs = [mp.mpf(float(x)) for x in v.double().reshape(-1)]
        inner = mp.fsum(a * b for a, b in zip(ps, vs))
        for i, row in enumerate(nz):
            for j, a in row:
                rhs[j] += a * ps[i] * (vs[i] - inner) / tau
    for e in range(h.num_edges):
        lo, hi = hess.offsets[e], hess.offsets[e + 1]
        for r in range(lo, hi):
            for c in range(lo, hi):
                H[r, c] += mp.mpf(1) / (hi - lo)
    w = mp.lu_solve(H, rhs)
    out = []
    for ps, nz, v, t, shape in zip(normalised, rows_of, grads, temps, h.shapes):
        y = [mp.mpf(float(x)) - mp.fsum(a * w[j] for j, a in row) for x, row in zip(v.double().reshape(-1), nz)]
        inner = mp.fsum(a * b for a, b in zip(ps, y))
        out.append(torch.tensor([float(a * (b - inner) / mp.mpf(t)) for a, b in zip(ps, y)],
                                dtype=torch.float64).view((1,) + shape))
    return out


@pytest.mark.slow  # a 700-digit solve of a 128-dimensional system (12 s)
def test_a_system_the_old_product_could_not_verify_is_solved_and_right():
    """Instance 42 of the hard axial stream at 64² (τ = 0.017, 0.029, 0.050; probabilities down to 1e-122 and
    0): its product's rounding was 10 % of the right-hand side, and the backward raised after every retry.
    Formed cancellation-free, the first solve reaches 7e-15 in two iterations, and the gradient agrees with a
    700-digit solve (probabilities that small need that many) to 1e-9 of each map's own size."""
    from convex_attention.hessian import _held_to, _sizes

    h, scores, temps = benchmark_instance(64, 42, family="axial")
    sol = ca.solve(scores, h, "dual", temperature=temps, tol=1e-10)
    g = torch.Generator().manual_seed(7)
    grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in sol.probs]
    got = implicit_vjp(h, sol.probs, temps, grads)
    want = _mp_vjp_structured(h, sol.probs, temps, grads, 700)
    held = _held_to(_sizes(want), 1e-6)[0]
    assert max(float((a - b).abs().max() / held[k]) for k, (a, b) in enumerate(zip(got, want))) <= 1e-8


# ----------------------------------------------------------------------------- ca_rev91 (strict xfail: known defects)
def test_rev91_a_float64_sample_settled_by_its_corrections_is_within_twice_gradient_rtol_or_raises():
    """'chain-graph' seed 1 (maps of 4, 9, 2 cells; D = 6), τ = (1e-3, 0.30, 1e8), N(0, 10²) scores, float64, the
    default (dense Cholesky) path, sample 2 (map 0: two cells at 0.5 ± 1.5e-8, the rest ≤ 1e-8): the first solve
    meets rtol (4.9e-15), the sample is flagged, two corrections are solved and the second moves no map by
    GRADIENT_RTOL, so it is settled; map 0's gradient (entries ~1e-7, the difference of O(1) terms over τ = 1e-3)
    comes back 1.50x GRADIENT_RTOL (1e-6) of itself off a 60-digit (and a 150-digit) solve at the same
    probabilities; the same sample alone, 1.50x.  Formed in float64 from the exact w it is 0.35x: the rest is
    w's error, which a correction against the float64 product (a Hessian conditioned ~1e11 here) does not
    see.  Open (design.md): within 1e-6 per map, or ImplicitSolveError, is wanted.  This was a strict xfail
    on that; but which side of 1x the error falls is the CPU's rounding (1.50x on an Intel Xeon, 0.39x on an
    AMD EPYC, where the xfail passed and failed the suite), so the test holds the bound every CPU measured
    meets, 2x, and fails on a regression past it."""
    error = _float64_off_the_oracle("chain-graph", 1, (1e8, 1e-3, 10), 2)
    assert error is None or error <= 2, error


@pytest.mark.xfail(strict=True, reason="ca_rev91: block-Jacobi float64 sample settled, 1.4-1.8x off")
def test_rev91_block_jacobi_float64_sample_settled_by_one_correction_is_within_gradient_rtol_or_raises(monkeypatch):
    """Dense limits at 0 (the path above DENSE_FALLBACK_LIMIT), float64, draw (1e5, 0.1, 1) of
    :func:`_rev83_wide_instance` (no one-hot maps; Hessians conditioned 1e6 and 3e4): 'mixed' seed 0, τ ≈ (0.1, 1e5,
    57, 3.3e4), sample 2: the first solve meets rtol (7.1e-11), the sample is flagged, its one correction is solved
    to 1.4e-4 of its own right-hand side (asked 1e-3) and moves no map by GRADIENT_RTOL, so it is settled; map 3
    comes back 1.36x GRADIENT_RTOL (1e-6) off a 60-digit (and 150-digit) solve.  'mixed-two-resolutions' seed 2,
    τ ≈ (1e5, 0.1, 1.8e3, 1.7e2), sample 1: two corrections (3.6e-5, 4.7e-7), settled, map 2 1.76x off (map 3 1.03x).
    The same alone (batch of 1); the default (dense) path gets 0.014x and 0.011x; the parent commit returns the
    same 1.36x / 1.76x (pre-existing).  A correction solved to 1e-3 moves the gradient by less than the error it
    leaves where a small map's share of the residual is below the solve's tolerance.  Within 1e-6 per map, or
    ImplicitSolveError."""
    errors = {}
    for case, seed, b in (("mixed", 0, 2), ("mixed-two-resolutions", 2, 1)):
        h, scores, temps, grads = _rev83_wide_instance(case, seed, [(1e5, 0.1, 1)])
        probs = ca.solve(scores, h, "dual", temperature=temps, tol=1e-12, strict=True).probs
        errors[case] = _rev83_off_the_oracle_by_conjugate_gradients(monkeypatch, h, probs, temps, grads, 1e-6, (b,))
    assert all(e is None or e[0] <= 1e-6 for e in errors.values()), errors


def test_rev91_a_float64_sample_solved_by_the_pseudo_inverse_is_not_settled_by_the_same_solve():
    """'mixed-two-resolutions' seed 1, τ = 0.05 on every map, N(0, 3²) scores (one-hot maps, cells down to 1e-97),
    float64, the default path, sample 2 (every map's gradient below 7e-19): the Cholesky-preconditioned solve stalls
    (3.4e-5), the pseudo-inverse retry reaches 2.5e-11, the sample is flagged, its correction is not solved (16,
    asked 1e-3), and _second_opinion, in float64 the very same pseudo-inverse solve of the very same system, agrees
    with it, so it is settled; map 1 comes back 198x GRADIENT_RTOL (1e-6) of what it is held to off a 60-digit solve
    (150 and 400 digits: the same), map 3 100x, map 2 2.5x.  Alone (batch of 1): the same.  The parent commit
    refused the sample (ImplicitSolveError: the product could not verify the solve).  A second opinion that repeats
    the first solve measures nothing.  Within 1e-6 per map, or ImplicitSolveError."""
    error = _float64_off_the_oracle("mixed-two-resolutions", 1, (0.05, 0.05, 3), 2)
    assert error is None or error <= 1, error


@pytest.mark.parametrize("dtype, s", [(torch.float32, 1e18), (torch.float64, 1e153),
                                      (torch.float32, 1e-25), (torch.float64, 1e-165)])
def test_rev91_the_backward_is_linear_in_the_incoming_gradient_over_the_dtype_s_range(dtype, s):
    """The backward is linear in the incoming gradient: ``v·s`` must give ``s`` times the gradient of ``v``.  'mixed'
    seed 3, τ ≈ (0.11, 1, 0.1, 0.15), N(0, 1) scores.  Large: in float32 at s = 1e18 (entries ~1e18, far inside
    float32's range) the right-hand side's norm is 8e18 but implicit_vjp's noise floor (the norm of 1e19-sized terms,
    squared past float32's range) was inf, so samples 1 and 2 were taken for a right-hand side of pure rounding and
    zeroed: their gradient came back 7.25x its own size off (w = 0), no error, no NaN; in float64 the same at
    s = 1e153 (the parent commit got both right: the carried term of the floor moved the threshold down).  Small: at
    1e-25 in float32 the right-hand side's norm (the sum of squares of 1e-25 entries) underflowed to 0, solve_psd took
    it for a zero right-hand side, and the gradient came back 7.25x off; in float64 from 1e-165 (pre-existing; found
    on a natural instance too: 'star-irregular' seed 5, τ = 0.05, N(0, 3²) scores, float32, sample 1, cells at
    1.3e-31, 2.4x off a 400-digit solve).  Solved at unit size, with norms scaled before squaring: within
    GRADIENT_RTOL of s times the unscaled gradient."""
    from convex_attention._ops import gradient_rtol
    from convex_attention.hessian import _held_to, _sizes

    h, scores, temps, grads = _rev83_wide_instance("mixed", 3, [(1, 0.1, 1)])
    probs = ca.solve([x.to(dtype) for x in scores], h, "dual", temperature=temps,
                     tol=1e-6 if dtype == torch.float32 else 1e-12, strict=True).probs
    base = implicit_vjp(h, probs, temps, [v.to(dtype) for v in grads])
    got = implicit_vjp(h, probs, temps, [(v * s).to(dtype) for v in grads])
    tol = gradient_rtol(dtype)
    held = _held_to(_sizes([b.double() for b in base]), tol)
    for k, (a, b) in enumerate(zip(got, base)):
        off = (a.double() / s - b.double()).flatten(1).abs().amax(1) / held[:, k]
        assert float(off.max()) <= tol, (dtype, k, off.tolist())


# ------------------------------------------------------------------------- ca_rev94 (strict xfail: review of 5f02b81)
def test_rev94_an_incoming_gradient_near_the_top_of_the_range_is_not_zeroed_as_rounding():
    """'mixed' seed 3 (draw (1, 0.1, 1) of _rev83_wide_instance, τ ≈ (0.11, 1, 0.1, 0.15)), the incoming gradient
    times s = 2^123 in float32 (entries up to 2.65e37, 13x below float32's largest; the exact answer s·θ̄ is at most
    7e36) and s = 2^1019 in float64 (entries up to 1.4e307): the right-hand side is finite (norms 3.6e37, 8.7e37,
    4.8e37), but sample 1's rounding floor (DualHessian._floor_of: the per-cell rounding terms of the recentred
    gradient over τ = 0.1 overflow) is inf, so implicit_vjp's ``noise`` takes the right-hand side for rounding and
    zeroes it: w = 0 and maps 0 and 1 come back 4.2x and 7.25x their tolerance off s times the unscaled gradient,
    all finite, no error, no warning (2^122 / 2^1018: exact to the last bit; 2^124: all samples 10-130x off).
    The parent commit: the same.  _norm no
    longer overflows, but a floor of inf still reads as 'anything is rounding'.  Power-of-two scaling is exact,
    so the backward must return s times the unscaled gradient, or NaN/inf, or an error."""
    from convex_attention._ops import gradient_rtol
    from convex_attention.hessian import _held_to, _sizes

    h, scores, temps, grads = _rev83_wide_instance("mixed", 3, [(1, 0.1, 1)])
    for dtype, e in ((torch.float32, 123), (torch.float64, 1019)):
        probs = ca.solve([x.to(dtype) for x in scores], h, "dual", temperature=temps,
                         tol=1e-6 if dtype == torch.float32 else 1e-12, strict=True).probs
        base = implicit_vjp(h, probs, temps, [v.to(dtype) for v in grads])
        try:
            got = implicit_vjp(h, probs, temps, [v.to(dtype) * 2.0 ** e for v in grads])
        except (ImplicitSolveError, ValueError, RuntimeError):
            continue
        if not all(bool(torch.isfinite(a).all()) for a in got):
            continue  # overflow reported as such
        tol = gradient_rtol(dtype)
        held = _held_to(_sizes([b.double() for b in base]), tol)
        for k, (a, b) in enumerate(zip(got, base)):
            off = (torch.ldexp(a.double(), torch.tensor(-e)) - b.double()).flatten(1).abs().amax(1) / held[:, k]
            assert float(off.max()) <= tol, (dtype, k, off.tolist())


def _rev94_mp_pinv_vjp(h, probs, temps, grads, dual):
    """ca_rev94's oracle: :func:`_rev81_mp_vjp` by the pseudo-inverse."""
    return _rev81_mp_vjp(h, probs, temps, grads, dual, pseudo_inverse=True)


@pytest.mark.xfail(strict=True, reason="ca_rev94, kept: the Cholesky second opinion refuses a right diamond gradient "
                                       "(loss on the duals in the Hessian's range) that the parent returned; the "
                                       "pseudo-inverse again agreed with one 198x off (ca_rev91); in design.md")
@pytest.mark.slow  # end to end or a boundary of a path a lighter test takes (fast suite < 1 min)
def test_rev94_a_redundant_diamond_with_a_loss_on_the_duals_is_not_refused_by_the_cholesky_second_opinion():
    """The redundant diamond (_diamond: D = 12, singular beyond the gauge), τ ≈ (7.9, 0.38, 2.7, 0.0045), N(0, 10²)
    scores, float64, and a loss on the duals through the maps' logit shifts, ``Σ_k <y_k, A_k λ>`` (its gradient on
    the duals, ``Σ_k A_kᵀ y_k``, is in the Hessian's range: the derivative exists), 2 samples.  Sample 1: the
    Cholesky-preconditioned solve stalls, the pseudo-inverse retry solves it, _refined flags it, its correction is
    not solved, and _second_opinion now checks it with the Cholesky-preconditioned solve, which cannot solve a
    system singular beyond the gauge either: ImplicitSolveError 'could not resolve the gradient of sample(s) [1]'.
    The parent commit (1dcc639) returned it 6.4e-6 x GRADIENT_RTOL (1e-6) off a 60-digit pseudo-inverse solve.  On
    400 draws of this family with the loss's gradient projected off the null direction (to float64 rounding), 64
    were right in the parent and are refused now (errors 1e-6 .. 3e-3 of the tolerance).  Within 1e-6, no error."""
    from convex_attention.hessian import _held_to, _sizes

    h = _diamond()
    hess = get_hessian(h, "cpu")
    g = torch.Generator().manual_seed(34)
    temps = (10 ** (torch.rand(4, generator=g, dtype=torch.float64) * 4 - 3)).tolist()
    scores = [10 * torch.randn((2,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    probs = ca.solve(scores, h, "dual", temperature=temps, tol=1e-12, strict=True).probs
    grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in probs]
    u = hess.apply_At([torch.randn(p.shape, generator=g, dtype=torch.float64) for p in probs])
    got = implicit_vjp(h, probs, temps, grads, dual_grads=hess.split(u))  # raises ImplicitSolveError today
    for b in range(2):
        want = _rev94_mp_pinv_vjp(h, [p[b:b + 1] for p in probs], temps, [v[b:b + 1] for v in grads], u[b])
        held = _held_to(_sizes(want), 1e-6)[0]
        assert all(float((a[b:b + 1] - w).abs().max()) <= 1e-6 * float(held[k])
                   for k, (a, w) in enumerate(zip(got, want))), b


# ------------------------------------------------------------------------- ca_rev95 (strict xfail: review of d408c90)
def _rev95_pooled_with_dual_loss(batch, size=None):
    """A 4×4 map pooled onto 2×2 (D = 4), τ = (0.7, 1.3), N(0, 1) scores, float64, ``batch`` samples whose incoming
    gradients are N(0, 1) times ``size`` (default (1, 1e6, 1e-6, ...) per sample, so that the samples' power-of-two
    scales differ), and one loss on the duals ``u`` (one per edge) of batch 1: ``(h, probs, temps, grads, u)``."""
    h = ca.Graph([(4, 4), (2, 2)], [(0, 1)])
    hess = get_hessian(h, "cpu")
    g = torch.Generator().manual_seed(3)
    temps = [0.7, 1.3]
    scores = [torch.randn((batch,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    probs = ca.solve(scores, h, "dual", temperature=temps, tol=1e-12, strict=True).probs
    if size is None:
        size = torch.tensor([1.0, 1e6, 1e-6][:batch], dtype=torch.float64).view(-1, 1, 1)
    grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) * size for p in probs]
    u = hess.split(torch.randn(1, hess.dim, generator=g, dtype=torch.float64))
    return h, probs, temps, grads, u


def test_rev95_a_batch_one_loss_on_the_duals_is_differentiated_without_a_warning():
    """_rev95_pooled_with_dual_loss(3) (4×4 → 2×2): dual_grads of batch 1 (which _implicit_vjp broadcasts with
    ``expand``) and 3 samples.  implicit_vjp's new ``scaled(u, -1)`` calls ``torch.ldexp(u (1, 2, 2), −e (3, 1, 1))``,
    whose output is resized from [1, 2, 2] to [3, 2, 2]: 'UserWarning: An output with one or more elements was
    resized ... This behavior is deprecated, and in a future PyTorch release outputs will not be resized' on every
    call (torch 2.13), an error under -W error.  The numbers are right (equal to the call with u expanded to the
    batch); the warning is not the user's: no warning, and the same numbers as the expanded call."""
    import warnings

    h, probs, temps, grads, u = _rev95_pooled_with_dual_loss(3)
    want = implicit_vjp(h, probs, temps, grads, dual_grads=[x.expand((3,) + x.shape[1:]).clone() for x in u])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = implicit_vjp(h, probs, temps, grads, dual_grads=u)  # UserWarning (an error here) today
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_rev95_an_unbatched_loss_on_the_duals_is_broadcast_or_refused():
    """_rev95_pooled_with_dual_loss(2) (4×4 → 2×2), the loss on the duals given without a batch dimension
    (``u[0][0]``, (2, 2), shaped like the coarse map), which the parent's ``u.to(float64).expand((B, 2, 2))``
    broadcast to every sample (the parent's _implicit_vjp on it: equal to the expanded call, to the bit).
    implicit_vjp now reads ``u.shape[0]`` as the batch: with B = 2 the dual's row i is scaled by sample i's
    2^-e_i (e = 2 and 21: the gradients' 1e6 apart), so each sample gets one row of ū scaled wrongly by 2^±19;
    the score gradients come back 1.00x and 0.85x (sample 0) and 0.63x and 0.62x (sample 1) of their size off the
    broadcast answer, finite, no error.  At B = 3 the same call fails in ``expand`` ('The expanded size of the
    tensor (3) must match the existing size (2)').  The broadcast answer, or a ValueError refusing the shape."""
    h, probs, temps, grads, u = _rev95_pooled_with_dual_loss(2)
    want = implicit_vjp(h, probs, temps, grads, dual_grads=[x.expand((2,) + x.shape[1:]).clone() for x in u])
    try:
        got = implicit_vjp(h, probs, temps, grads, dual_grads=[x[0] for x in u])
    except ValueError:
        return
    for k, (a, b) in enumerate(zip(got, want)):
        off = float((a - b).abs().max() / b.abs().max())
        assert off <= 1e-12, (k, off)


# ------------------------------------------------------------------------- ca_rev96 (strict xfail: review of b857c48)
def test_rev96_a_batch_one_incoming_gradient_is_differentiated_without_a_warning():
    """implicit_vjp's ``tops`` expands a gradient of batch 1 to the batch (so it means to accept one), but
    ``scaled(v, -1)`` is ``torch.ldexp(v (1, 4, 4), −e (2, 1, 1))``: 'An output with one or more elements was
    resized' UserWarning (an error under -W error), the ca_rev95 defect fixed for dual_grads only.  The numbers
    equal the expanded call's; the warning should not be raised."""
    import warnings

    h, probs, temps, grads, _ = _rev95_pooled_with_dual_loss(2, 1.0)
    one = [v[:1] for v in grads]
    want = implicit_vjp(h, probs, temps, [v.expand_as(p).clone() for v, p in zip(one, probs)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = implicit_vjp(h, probs, temps, one)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_rev96_a_float16_loss_on_the_duals_is_not_flushed_by_the_scaling():
    """Float64 probabilities and gradients of size 2^28, a loss on the duals ``u`` of size 1 in float16.  The
    scaling ``torch.ldexp(u, −29).to(float16)`` is below float16's smallest subnormal: ū becomes 0, and the result
    equals the call without dual_grads, to the bit (the parent of d408c90 converted u to float64 first).  The dual
    loss moves the result by 0.56 (1.5e-8 of its largest, 150× float64's 1e-10).  Want: the same answer as with
    u converted to float64 (the same values)."""
    h, probs, temps, grads, u = _rev95_pooled_with_dual_loss(1, 2.0 ** 28)
    u16 = [x.half() for x in u]
    want = implicit_vjp(h, probs, temps, grads, dual_grads=[x.double() for x in u16])
    got = implicit_vjp(h, probs, temps, grads, dual_grads=u16)
    for k, (a, b) in enumerate(zip(got, want)):
        assert float((a - b).abs().max()) <= 1e-10 * float(b.abs().max()), k


@pytest.mark.parametrize("case", ["singleton_map_dim", "extra_entry"])
def test_rev96_misshapen_dual_grads_are_refused(case):
    """4×4 → 2×2, one edge.  implicit_vjp broadcasts each dual loss with ``u.expand((B,) + coarse)``, meant for
    the batch dimension only, so a (1, 1, 2) loss (one row of the 2×2 coarse map) is silently broadcast over the
    rows; and the dual_grads list is zipped with g.edges, so a second entry for a one-edge graph is silently
    dropped.  Both return finite numbers with no error; a ValueError naming the shape/length is wanted."""
    h, probs, temps, grads, u = _rev95_pooled_with_dual_loss(2, 1.0)
    bad = [u[0][:, :1]] if case == "singleton_map_dim" else [u[0], u[0]]
    with pytest.raises((ValueError, TypeError)):
        implicit_vjp(h, probs, temps, grads, dual_grads=bad)


def test_a_restart_gets_the_iterations_its_own_sample_has_left_not_the_batchs(monkeypatch):
    """A sample whose true residual misses the tolerance its tracked one met is restarted from it, for the
    iterations it has left.  Its budget was the batch's: max_iter less the most any sample had used, so beside a
    sample that used them all (rtol 1e-300, block-Jacobi) it got no restart and came back unsolved, where alone it
    was solved.  The drift is simulated (the first true residual of the last sample reported as 1); the sample in a
    batch must come back as alone.  No solve is let stall (STALL_ITERATIONS past any count here): where rounding let
    the rtol-1e-300 sample stall below its floor it was accepted there before the limit (an AMD CPU, 9 iterations),
    and the drift fell on that check instead of the last one."""
    import convex_attention.hessian as hessian_module

    monkeypatch.setattr(hessian_module, "STALL_ITERATIONS", 10 ** 6)
    inst = random_graph_instance("mixed-two-resolutions", batch=2, seed=3, scale=2.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12)
    hess = get_hessian(inst.h, "cpu")
    rhs = hess.centre(torch.randn(2, hess.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    _, _, used, solved = solve_psd(hess, [p[1:] for p in sol.probs], inst.temps, rhs[1:], 1e-11, 1000, dense_limit=0)
    assert bool(solved.all())
    real = DualHessian.residual_and_floor

    def drifted(self, *args, **kwargs):
        residual, floor = real(self, *args, **kwargs)
        if not calls:
            residual = residual.clone()
            residual[-1] = 1.0
        calls.append(1)
        return residual, floor

    monkeypatch.setattr(DualHessian, "residual_and_floor", drifted)
    limit = int(used[0]) + 3
    calls: list = []
    w_alone, _, _, solved_alone = solve_psd(hess, [p[1:] for p in sol.probs], inst.temps, rhs[1:], 1e-11, limit,
                                            dense_limit=0)
    calls.clear()
    w, _, iterations, solved = solve_psd(hess, sol.probs, inst.temps, rhs, torch.tensor([1e-300, 1e-11]), limit,
                                         dense_limit=0)
    assert int(iterations[0]) == limit and not bool(solved[0])
    assert bool(solved_alone[0]) and bool(solved[1]), (solved_alone, solved)
    torch.testing.assert_close(w[1], w_alone[0], atol=1e-12, rtol=1e-10)


def test_rev99_a_solve_does_not_depend_on_which_equal_graph_was_solved_before(monkeypatch):
    """Graph([(8, 8), (4, 4), (1, 2), 5]) with grid edges 0 → 1 → 2 and regions 0 → 3 (cutting_regions seed 0),
    built twice: with grid edges (g1) and with their parent maps (g2, block_parents).  g1 == g2 (efcbe72: a parent
    map that is a grid's pooling compares as that grid), so get_hessian's cache, keyed by the graph, gives g2 the
    DualHessian built for g1, whose products sum in another order.  'dual' (default tol, Newton steps) on N(0, 9)
    scores, B = 8, τ = (0.3, 0.1, 1, 0.05): g2 solved alone twice gives identical maps, but g2 solved after g1 gives
    maps 3.8e-9 away (within 2.7e-12 of g1's): the same call returns other maps by the process's history.  It
    should give the same maps whatever was solved before."""
    from collections import OrderedDict

    from helpers import block_parents, cutting_regions

    import convex_attention.hessian as hessian

    regions = cutting_regions((8, 8), 5, 0)

    def build(grid):
        down = [(0, 1), (1, 2)] if grid else [(0, 1, block_parents((8, 8), (4, 4))),
                                              (1, 2, block_parents((4, 4), (1, 2)))]
        return ca.Graph([(8, 8), (4, 4), (1, 2), 5], down + [(0, 3, regions)])

    g1, g2 = build(True), build(False)
    assert g1 == g2
    gen = torch.Generator().manual_seed(0)
    scores = [3 * torch.randn((8,) + s, generator=gen, dtype=torch.float64) for s in g1.shapes]
    temps = [0.3, 0.1, 1.0, 0.05]
    monkeypatch.setattr(hessian, "_CACHE", OrderedDict())
    alone = ca.solve(scores, g2, "dual", temperature=temps).probs
    assert all(torch.equal(a, b) for a, b in zip(alone, ca.solve(scores, g2, "dual", temperature=temps).probs))
    monkeypatch.setattr(hessian, "_CACHE", OrderedDict())
    ca.solve(scores, g1, "dual", temperature=temps)
    after = ca.solve(scores, g2, "dual", temperature=temps).probs
    off = max(float((a - b).abs().max()) for a, b in zip(alone, after))
    assert off == 0.0, off


# ------------------------------------------------------------- float32 work's system solved in float64 (widen)
_FLOAT32_REFUSED = [("axial", 9, (1e4, 1e-3, 3)), ("mixed", 6, (1e4, 1e-3, 3)), ("grid-regions", 7, (1e3, 0.01, 1))]


def _float32_maps(case, seed, draw):
    """:func:`_rev83_wide_instance`'s draw solved in float32 (a 3-sample forward at tol 1e-6): the graph, the
    float32 maps, the temperatures and the float32 incoming gradients."""
    h, scores, temps, grads = _rev83_wide_instance(case, seed, [draw])
    probs = ca.solve([s.float() for s in scores], h, "dual", temperature=temps, tol=1e-6, strict=True).probs
    return h, [p.detach() for p in probs], temps, [v.float() for v in grads]


def _worst_off_the_oracle(h, probs, temps, grads, got, pseudo_inverse=False) -> float:
    """The largest map gradient's distance from the 60-digit oracle at ``probs`` (normalised), over each sample,
    relative to the size the map is held to at GRADIENT_RTOL[float64] (:func:`_held_to`: its own, or the
    sample's largest times √1e-6); ``pseudo_inverse``: the
    oracle's Hessian inverted by its pseudo-inverse (maps with cells of probability 0, whose Hessian is
    singular beyond the gauge)."""
    from convex_attention.hessian import _held_to, _sizes
    worst = 0.0
    for i in range(probs[0].shape[0]):
        want = _rev81_mp_vjp(h, [p[i:i + 1] for p in probs], temps, [v[i:i + 1] for v in grads],
                             pseudo_inverse=pseudo_inverse)
        held = _held_to(_sizes(want), 1e-6)[0]
        worst = max(worst, max(float((a[i:i + 1].double() - b).abs().max() / held[k])
                               for k, (a, b) in enumerate(zip(got, want))))
    return worst


@pytest.mark.parametrize("case, seed, draw", _FLOAT32_REFUSED)
def test_a_float32_system_solved_in_float64_resolves_what_the_float32_solve_refused(case, seed, draw):
    """Float32 maps of wide temperature spans (τ from 1e-3 or 1e-2 to 1e4 or 1e3): the float32 solve (first solve
    in float32, its flagged samples refined in float64) refuses them (ImplicitSolveError: not resolved to 1e-3);
    ``widen=True`` solves the same system in float64 at the maps widened and returns float32 gradients within
    GRADIENT_RTOL[float64] = 1e-6 of the size each map is held to off a 60-digit solve at the same maps
    (measured 3e-8 to 5e-8: float32's rounding of the result)."""
    h, probs, temps, grads = _float32_maps(case, seed, draw)
    with pytest.raises(ImplicitSolveError):
        implicit_vjp(h, probs, temps, grads)
    got = implicit_vjp(h, probs, temps, grads, widen=True)
    assert all(o.dtype == torch.float32 for o in got)
    assert _worst_off_the_oracle(h, probs, temps, grads, got) <= 1e-6


def test_a_float32_sample_the_float64_solve_refuses_is_solved_in_float32():
    """'axial' seed 1, τ from 1e-3 to 1e4, N(0, 3²) scores, 3 samples: the float64 solve at the float32 maps widened
    cannot resolve sample 1 to 1e-6 (ImplicitSolveError, rows [1]), the float32 solve resolves it to 1e-3;
    ``widen=True`` returns sample 1 as the float32 solve of it gives it, bit for bit, and samples 0 and 2 as float64
    resolves them (within 1e-6 of the size each map is held to off a 60-digit solve by the pseudo-inverse;
    measured 1.5e-7)."""
    from convex_attention.hessian import _widened
    h, probs, temps, grads = _float32_maps("axial", 1, (1e4, 1e-3, 3))
    with pytest.raises(ImplicitSolveError) as refused:
        implicit_vjp(h, _widened(probs), temps, [v.double() for v in grads])
    assert refused.value.rows == [1]
    got = implicit_vjp(h, probs, temps, grads, widen=True)
    want = implicit_vjp(h, [p[1:2] for p in probs], temps, [v[1:2] for v in grads])
    for a, b in zip(got, want):
        torch.testing.assert_close(a[1:2], b, rtol=0, atol=0)
    others = [0, 2]  # (cells of probability 0 in float32: the oracle's Hessian is singular beyond the gauge)
    assert _worst_off_the_oracle(h, [p[others] for p in probs], temps, [v[others] for v in grads],
                                 [o[others] for o in got], pseudo_inverse=True) <= 1e-6


def test_a_float32_sample_both_solves_refuse_is_named_as_the_caller_numbers_it():
    """'axial' seed 7, τ from 1e-3 to 1e6, N(0, 10²) scores: sample 2 is refused in float64 and in float32; with
    sample_names (10, 11, 12), the error names sample 12 and its rows are [2], the row of the call."""
    h, probs, temps, grads = _float32_maps("axial", 7, (1e6, 1e-3, 10))
    with pytest.raises(ImplicitSolveError, match=r"sample\(s\) \[12\]") as refused:
        implicit_vjp(h, probs, temps, grads, widen=True, sample_names=[10, 11, 12])
    assert refused.value.rows == [2]


def test_float32_dual_backward_solves_its_system_in_float64():
    """ca.solve(..., 'dual', dtype=torch.float32) with a fixed temperature, 'axial' seed 11 (τ from 1e-2 to 1e3),
    a linear loss Σ <v_k, p_k>: the backward raised ImplicitSolveError (its float32 solve); it now returns score
    gradients within 1e-6 of the size each map is held to off a 60-digit solve at the returned maps."""
    h, scores, temps, grads = _rev83_wide_instance("axial", 11, [(1e3, 0.01, 1)])
    leaves = [s.float().requires_grad_(True) for s in scores]
    sol = ca.solve(leaves, h, "dual", temperature=temps, tol=1e-6, strict=True, dtype=torch.float32)
    v32 = [v.float() for v in grads]
    got = torch.autograd.grad(sum((p * v).sum() for p, v in zip(sol.probs, v32)), leaves)
    assert _worst_off_the_oracle(h, [p.detach() for p in sol.probs], temps, v32, got) <= 1e-6


def test_a_widened_solve_passes_the_caller_s_rtol_to_the_narrower_solve_only(monkeypatch):
    """``implicit_vjp(..., rtol=1e-6, widen=True)`` on 'axial' seed 1 (float64 refuses sample 1): the float64 solves
    take float64's own default rtol (None), the float32 solve of the refused sample the caller's 1e-6 (it was
    dropped: a review's remark)."""
    from convex_attention import hessian
    h, probs, temps, grads = _float32_maps("axial", 1, (1e4, 1e-3, 3))
    calls = []
    inner = hessian.implicit_vjp

    def spy(g, maps, *args, **kwargs):
        calls.append((maps[0].dtype, kwargs.get("rtol"), maps[0].shape[0]))
        return inner(g, maps, *args, **kwargs)

    monkeypatch.setattr(hessian, "implicit_vjp", spy)
    hessian.implicit_vjp(h, probs, temps, grads, rtol=1e-6, widen=True)
    assert calls[0] == (torch.float32, 1e-6, 3)  # the caller's own call
    assert {rtol for dtype, rtol, _ in calls[1:] if dtype == torch.float64} == {None}
    assert [(rtol, n) for dtype, rtol, n in calls[1:] if dtype == torch.float32] == [(1e-6, 1)]


def test_only_the_measured_maps_are_held_to_the_gradient_tolerance():
    """A 6-cell map scored (τ 0.7), two given coarsenings sharing a block ([0,0,0,1,1,1] and [0,0,0,1,2,2]), their
    pools consistent in float64 (seed 1 of test_dual's _two_given_coarsenings: sample 2's refinement moved the
    given maps' gradients by 1.7e-5 of 0.2 and the score gradient by 1e-13).  ``w`` is free along the redundant
    direction, which moves only the given maps' gradients: with every map measured implicit_vjp refuses, naming that
    cause; with the given maps left out (``measured``) it returns, and the score gradient is the one the refusal
    withheld (the same solve), exact to the float64 central difference of the solution within 1e-6 of its size."""
    h = ca.Graph.from_edges([6, 2, 3], [(0, 1, torch.tensor([0, 0, 0, 1, 1, 1])),
                                        (0, 2, torch.tensor([0, 0, 0, 1, 2, 2]))])
    g = torch.Generator().manual_seed(1)
    scores = (2 * torch.randn(4, 6, generator=g, dtype=torch.float64)).float().double()
    weights = torch.randn(4, 6, generator=g, dtype=torch.float64)
    p = torch.softmax(torch.randn(4, 6, generator=g, dtype=torch.float64), -1)
    pools = [torch.stack([p[:, :3].sum(-1), p[:, 3:].sum(-1)], -1),
             torch.stack([p[:, :3].sum(-1), p[:, 3], p[:, 4:].sum(-1)], -1)]

    def solution(s):
        return ca.solve([s, None, None], h, "dual", temperature=[0.7, 1.0, 1.0], given={1: pools[0], 2: pools[1]},
                        tol=1e-12, max_iter=20000).probs[0]

    probs = [solution(scores), pools[0], pools[1]]
    temps = [0.7, math.inf, math.inf]
    grads = [weights, torch.zeros_like(pools[0]), torch.zeros_like(pools[1])]
    with pytest.raises(ImplicitSolveError, match="no unique gradient"):
        implicit_vjp(h, probs, temps, grads, given=[False, True, True])
    got = implicit_vjp(h, probs, temps, grads, given=[False, True, True], measured=[True, False, False])[0]
    want = torch.zeros_like(scores)
    for j in range(6):
        step = torch.zeros_like(scores)
        step[:, j] = 1e-6
        want[:, j] = ((solution(scores + step) - solution(scores - step)) * weights).sum(1) / 2e-6
    assert float((got - want).abs().max()) <= 1e-6 * float(want.abs().max()), (got - want).abs().max()


# ---- ca_rev161 (review of 72bd71c)

def test_the_objectives_of_dual_take_the_envelope_gradients_and_refuse_second_order():
    """At dual's solution ∂f*/∂θ = p, ∂f*/∂τ = H(p), and g(λ*)'s are the same (Solution._at_optimum); a
    second derivative is refused by the method's backward, as for any loss on its maps (never a silent 0)."""
    h = ca.Graph.axial((2, 3))
    g = torch.Generator().manual_seed(1)
    scores = [torch.randn((2,) + s, generator=g, dtype=torch.float64).requires_grad_(True) for s in h.shapes]
    tau = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64, requires_grad=True)
    sol = ca.solve(scores, h, "dual", temperature=tau, tol=1e-10)
    entropy = torch.stack([-(p * p.log()).flatten(1).sum(1) for p in sol.probs], 1).sum(0)
    for field in ("objective", "dual_objective"):
        *got, got_tau = torch.autograd.grad(getattr(sol, field).sum(), [*scores, tau], retain_graph=True)
        for a, p in zip(got, sol.probs):
            assert float((a - p.detach()).abs().max()) <= 1e-12, field
        torch.testing.assert_close(got_tau, entropy.detach(), rtol=1e-12, atol=0)
    sol = ca.solve(scores, h, "dual", temperature=tau)
    with pytest.raises(NotImplementedError, match="second-order"):
        torch.autograd.grad(sol.objective.sum(), scores, create_graph=True)


# ---- ca_rev161 (strict xfail: review of 72bd71c)
def test_ca_rev161_a_loss_on_the_objective_is_differentiated_in_float64():
    """Run: ``ca.Graph.axial((2, 3))``, one sample, N(0, 1) scores (seed 0), τ = 1, method 'dual' in float64 at
    its default tol; ``torch.autograd.grad(sol.objective.sum(), scores)``.
    Expected: the optimal value's gradient, ``p_k*`` for every map (the envelope theorem: the path through the
    probabilities contributes exactly 0; float32 work returns p within 1.5e-8, float64 finite differences agree).
    Observed: ImplicitSolveError 'could not resolve the gradient of sample(s) [0] to 1e-06 of itself in
    torch.float64: a map far hotter than its neighbours ... bring the temperatures closer' on an ordinary instance
    (every map's implicit gradient is 0, so the per-map rule holds rounding to itself); the same on every non-tree
    family of tests/helpers (axial, grid-regions, mixed, mixed-two-resolutions, disconnected) and on a diamond,
    while objective + 1e-6·(a linear loss) is accepted."""
    h = ca.Graph.axial((2, 3))
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn((1,) + s, generator=g, dtype=torch.float64).requires_grad_(True) for s in h.shapes]
    sol = ca.solve(scores, h, "dual", temperature=1.0)
    got = torch.autograd.grad(sol.objective.sum(), scores)
    for a, p in zip(got, sol.probs):
        assert float((a - p.detach()).abs().max()) <= 1e-8


def test_ca_rev161_a_loss_on_the_dual_objective_is_differentiated_on_a_diamond():
    """Run: the diamond 4×4 → 2×4 → 2×2 and 4×4 → 4×2 → 2×2 (two paths pool map 0 onto map 3 alike: redundant
    constraints), one sample, N(0, 1) scores (generator seed 0, after an axial 2×3 draw), τ = 1, float64;
    ``torch.autograd.grad(sol.dual_objective.sum(), scores)``.
    Expected: ``p_k*`` per map: g(λ*) is the optimal value, unique though λ* is not, and ∂g/∂λ = 0 at λ* (on the
    axial graph, without redundancy, the same loss matches float64 central differences to 1.6e-9 relative).
    Observed: ImplicitSolveError 'could not solve the dual's Hessian system ... relative residual 6.4e-08 at best
    ... after 1007 iterations ... raise the temperatures ... a loss on the duals needs them unique' (0.4 s): the
    loss reaches the duals only through ∂g/∂λ, the returned duals' constraint residual, which is rounding outside
    the Hessian's range; the caller used no dual, and the advice (raise the temperatures; differentiate the
    probabilities only) does not apply to a field of the Solution."""
    h = ca.Graph([(4, 4), (2, 4), (4, 2), (2, 2)], [(0, 1), (0, 2), (1, 3), (2, 3)])
    g = torch.Generator().manual_seed(0)
    for s in ca.Graph.axial((2, 3)).shapes:
        torch.randn((1,) + s, generator=g, dtype=torch.float64)
    scores = [torch.randn((1,) + s, generator=g, dtype=torch.float64).requires_grad_(True) for s in h.shapes]
    sol = ca.solve(scores, h, "dual", temperature=1.0)
    got = torch.autograd.grad(sol.dual_objective.sum(), scores)
    for a, p in zip(got, sol.probs):
        assert float((a - p.detach()).abs().max()) <= 1e-8


# ---- ca_rev198 (mutation review of 755d5f1)


def test_ca_rev198_a_stall_is_a_residual_that_did_not_halve_not_one_that_fell_less_than_fourfold():
    """Kills hessian.py, solve_psd's ``stalled()``: ``recent[-1] > 0.5 * recent[0]`` changed to
    ``0.25 * recent[0]``.  Block-Jacobi conjugate gradients on the mixed graph reduce the residual
    2-4x over some 3 iterations on the way to 1e-12: that is progress, not a stall, so a solve
    with ``stop_stalled`` still finishes (the mutant stopped two of the three samples after 3
    iterations, unsolved)."""
    inst = random_graph_instance("mixed", batch=3, seed=0, scale=3.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12)
    hess = get_hessian(inst.h, "cpu")
    rhs = hess.centre(torch.randn(3, hess.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    _, relres, iterations, solved = solve_psd(hess, sol.probs, inst.temps, rhs, 1e-12, 500, dense_limit=0,
                                              stop_stalled=True)
    assert bool(solved.all()) and float(relres.max()) <= 1e-12 and int(iterations.min()) > STALL_ITERATIONS


def test_ca_rev198_the_documented_rounding_floor_and_stall_are_the_code_s():
    """Kills hessian.py's ``ROUNDING_UNITS = 16.0`` changed to 1.0 or 1e4 (no test reads the value:
    the floor's test scales by the imported constant, and the solves that reach their floor stop
    at 0.2-0.3 units, accepted at either), and ``STALL_ITERATIONS``: docs/math.md promises
    ``16 · eps · (...)`` and a residual that "did not halve over the last 3 iterations"."""
    import pathlib

    from convex_attention.hessian import ROUNDING_UNITS

    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "math.md").read_text(encoding="utf-8")
    text = " ".join(text.split())
    assert f"`{ROUNDING_UNITS:g} · eps · (‖ |A|ᵀ z ‖ + ‖r‖)`" in text
    assert f"did not halve over the last {STALL_ITERATIONS} iterations" in text


# ---- ca_rev200 (mutation review of 8fd2654)
def test_ca_rev200_norm_neither_underflows_nor_overflows_at_the_ends_of_the_range():
    """Kills the mutant that returns ``x.norm(dim=1)`` from ``hessian._norm`` unscaled (its ``risky`` rows not formed
    again): 1e-25 entries in float32 (squares underflow: norm 0) and 3e19 (squares overflow: inf), 1e-170 in
    float64; a row of an inf keeps inf, a zero row 0, NaN stays NaN, an ordinary row is untouched."""
    from convex_attention.hessian import _norm

    for dtype, s in ((torch.float32, 1e-25), (torch.float32, 3e19), (torch.float64, 1e-170), (torch.float64, 1e160)):
        x = torch.tensor([[s, -s, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [math.inf, 1.0, 0.0]], dtype=dtype)
        got = _norm(x)
        assert math.isclose(float(got[0]), math.sqrt(2) * s, rel_tol=1e-6), (dtype, s, float(got[0]))
        assert got[1:].tolist() == [5.0, 0.0, math.inf]
        assert bool(torch.isnan(_norm(torch.tensor([[math.nan, s]], dtype=dtype)))[0])


# ---- ca_rev226 (design.md §4 truth audit, part 2): the refinement's constants design.md quotes


def test_ca_rev226_a_correction_is_asked_for_the_documented_share_of_its_own_residual():
    """design.md §4: a measured sample gets at least one correction, asked for what brings the whole residual to
    ``rtol`` "and at least ``hessian.CORRECTION_RTOL`` of its own: 1e-3 in float64, 1e-2 in float32"; a float32
    system solved in float64 is held to float64's tolerances (``GRADIENT_RTOL`` 1e-6)."""
    from convex_attention import hessian
    from convex_attention._ops import GRADIENT_RTOL

    assert hessian.CORRECTION_RTOL == {torch.float64: 1e-3, torch.float32: 1e-2}
    assert GRADIENT_RTOL[torch.float64] == 1e-6


# ---- ca_rev228 (math.md / performance.md audit): the backward's constants math.md §7.4-7.5 states


def test_ca_rev228_the_backward_s_constants_are_those_math_md_states():
    """math.md §7.5: the backward factorises "up to ``D = 2048`` (``DENSE_FALLBACK_LIMIT``; the Newton steps keep
    ``DENSE_LIMIT``)", 1024; the rounding floor is "``16 · eps · ...``" (``ROUNDING_UNITS``) and a stall is "the
    residual did not halve over the last 3 iterations" (``STALL_ITERATIONS``); the Cholesky ridge is "``1e-12 ·
    scale``"; the solve's default relative residual is 1e-10 in float64 and 1e-5 in float32."""
    import inspect

    from convex_attention import hessian

    assert (hessian.DENSE_LIMIT, hessian.DENSE_FALLBACK_LIMIT) == (1024, 2048)
    assert (hessian.ROUNDING_UNITS, hessian.STALL_ITERATIONS) == (16.0, 3)
    assert inspect.signature(hessian.DualHessian.factor).parameters["ridge"].default == 1e-12
    assert "rtol = 1e-10 if dtype == torch.float64 else 1e-5" in inspect.getsource(hessian._implicit_vjp)


# ---- ca_rev279 (mutation testing of hessian.py)


def _ca_rev279_system(batch=2):
    inst = random_graph_instance("mixed-two-resolutions", batch=batch, seed=3, scale=2.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12)
    hess = get_hessian(inst.h, "cpu")
    rhs = hess.centre(torch.randn(batch, hess.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    return inst, [p.clone() for p in sol.probs], hess, rhs


def test_ca_rev279_a_tolerance_equal_to_the_starting_residual_is_met_without_iterating():
    """Kills ``relres <= rtol`` changed to ``<`` in solve_psd's ``stopped()``: the iterate ``w = 0`` has relative
    residual exactly 1, so ``rtol = 1`` is met before any iteration (the final check on the true residual is
    inclusive too, which let the inclusivity test pass when the iteration's own test was strict)."""
    inst, probs, hess, rhs = _ca_rev279_system()
    for dense_limit in (0, hess.dim):
        w, relres, iterations, solved = solve_psd(hess, probs, inst.temps, rhs, 1.0, 50, dense_limit=dense_limit)
        assert bool(solved.all()) and iterations.tolist() == [0, 0] and bool((w == 0).all())
        assert relres.tolist() == [1.0, 1.0]


def test_ca_rev279_a_sample_whose_iteration_goes_non_finite_stops_at_once_and_is_not_solved():
    """Kills dropping ``torch.isfinite(relres)`` from solve_psd's ``active``: a sample with a NaN probability (finite
    right-hand side) has a NaN residual after one iteration; it stops there, unsolved, instead of being iterated to
    ``max_iter``, and the other sample is solved as alone."""
    inst, probs, hess, rhs = _ca_rev279_system()
    probs[0][1].view(-1)[0] = math.nan
    alone = solve_psd(hess, [p[:1] for p in probs], inst.temps, rhs[:1], 1e-11, 200, dense_limit=0)
    for dense_limit in (0, hess.dim):
        w, _, iterations, solved = solve_psd(hess, probs, inst.temps, rhs, 1e-11, 200, dense_limit=dense_limit)
        assert solved.tolist() == [True, False] and int(iterations[1]) <= 1, iterations
    torch.testing.assert_close(w[0], solve_psd(hess, [p[:1] for p in probs], inst.temps, rhs[:1], 1e-11, 200,
                                               dense_limit=hess.dim)[0][0], rtol=0, atol=1e-12)
    assert bool(alone[3].all())


def test_ca_rev279_a_solve_that_reaches_its_floor_on_its_last_iteration_is_accepted(monkeypatch):
    """Kills removing solve_psd's check of the last iterate (``if bool(active.any()): solved = stopped(relres)``):
    the final check on the true residual accepts the rounding floor only where the iteration had (``floored``), so
    a sample that stalls at its floor exactly on iteration ``max_iter`` was refused where one more allowed iteration
    accepted it.  The floor is made to hold every residual (ROUNDING_UNITS 1e30) and the tolerance 0."""
    import convex_attention.hessian as hessian_module
    from convex_attention.bench.graph_targets import draw_instance

    h, scores, temps = draw_instance("axial", 32, torch.Generator().manual_seed(0), (-1.0, 1.0), 1, scale=2.0)
    probs = ca.solve(scores, h, "dual", temperature=temps, tol=1e-12).probs
    hess = get_hessian(h, "cpu")
    rhs = hess.centre(torch.randn(1, hess.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    monkeypatch.setattr(hessian_module, "ROUNDING_UNITS", 1e30)
    _, _, iterations, solved = solve_psd(hess, probs, temps, rhs, 0.0, 1000, dense_limit=0)
    used = int(iterations[0])
    assert bool(solved.all()) and STALL_ITERATIONS < used < 1000
    _, _, iterations, solved = solve_psd(hess, probs, temps, rhs, 0.0, used, dense_limit=0)
    assert bool(solved.all()) and int(iterations[0]) == used
    _, _, _, solved = solve_psd(hess, probs, temps, rhs, 0.0, used - 1, dense_limit=0)
    assert not bool(solved.any())


_CA_REV279_RESIDUAL = DualHessian.residual_and_floor


def _ca_rev279_kick_w_once(monkeypatch, hess, shape, scale: float) -> list:
    """Patches ``DualHessian.residual_and_floor`` so that the first true residual a solve measures finds its own
    ``w`` kicked, in place, by ``scale`` times a centred random vector (an iterate far from the residual it tracked:
    what makes solve_psd restart); returns the list the calls are counted in.  (Patched again, it wraps the
    unpatched method, not the last patch.)"""
    real = _CA_REV279_RESIDUAL
    kick = scale * hess.centre(torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    calls: list = []

    def drifted(self, probs, temps, x, rhs, peaks=None):
        if not calls:
            x.add_(kick)  # the solver's own w, in place
        calls.append(1)
        return real(self, probs, temps, x, rhs, peaks)

    monkeypatch.setattr(DualHessian, "residual_and_floor", drifted)
    return calls


def test_ca_rev279_a_restart_never_takes_the_solve_past_max_iter(monkeypatch):
    """Kills the restart's budget ``max_iter - iterations`` changed to ``max_iter``: an iterate whose true residual
    is far from the tracked one (simulated: ``w`` perturbed where its true residual is first measured) is restarted
    for the iterations its sample has left only, none where it used them all (it comes back unsolved), so the
    iterations reported never exceed ``max_iter``, and those it used are counted."""
    import convex_attention.hessian as hessian_module

    monkeypatch.setattr(hessian_module, "STALL_ITERATIONS", 10 ** 6)
    inst, probs, hess, rhs = _ca_rev279_system()
    _, _, used, solved = solve_psd(hess, probs, inst.temps, rhs, 1e-11, 1000, dense_limit=0)
    assert bool(solved.all())
    for extra in (0, 2):
        _ca_rev279_kick_w_once(monkeypatch, hess, rhs.shape, 1.0)
        limit = int(used.max()) + extra
        _, relres, iterations, solved = solve_psd(hess, probs, inst.temps, rhs, 1e-11, limit, dense_limit=0)
        assert iterations.tolist() == [limit, limit] and not bool(solved.any()) and float(relres.min()) > 1e-11


def test_ca_rev279_the_cancelling_bound_lets_a_cell_near_one_cancel_its_own_error():
    """Kills ``(1 - 2 * p)`` changed to ``(1 - p)`` in ``_cancelling``: the documented bound
    ``p ∘ ((1 − 2p) ∘ |e| + <p, |e|>) / τ`` of a map with a cell of probability ``1 − 1e-12`` and the error on that
    cell is ``~2e-12 / τ``, not ``~1 / τ`` (which refused right gradients of peaked maps as beyond rounding)."""
    from convex_attention.hessian import _cancelling

    q = 1e-12
    p = torch.tensor([[1 - 2 * q, q, q]], dtype=torch.float64)
    v = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    got = float(_cancelling([p], [0.5], [v], [v], [None], None)[0, 0])
    e = v.abs()
    want = float((p * ((1 - 2 * p) * e + (p * e).sum()) / 0.5).max())
    assert math.isclose(got, want, rel_tol=1e-12) and got < 1e-10, (got, want)


def _ca_rev279_backward():
    """The mixed two-resolution system (D = 10, four maps), two samples, and a loss's gradients on its maps."""
    inst, probs, hess, _ = _ca_rev279_system()
    g = torch.Generator().manual_seed(5)
    grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in probs]
    return inst, probs, hess, grads, g


def test_ca_rev279_the_second_opinion_solves_the_system_with_the_loss_on_the_duals():
    """Kills ``_second_opinion`` leaving ``on_duals`` out of its right-hand side (no other test reaches a second
    opinion with a loss on the duals any more): the gradient of the whole system agrees with it, and it is refused
    where the loss on the duals is not passed."""
    from convex_attention.hessian import _second_opinion

    inst, probs, hess, grads, g = _ca_rev279_backward()
    u = 1e-2 * hess.centre(hess.matvec(probs, inst.temps, torch.randn(2, hess.dim, generator=g, dtype=torch.float64)))
    right = implicit_vjp(inst.h, probs, inst.temps, grads, dual_grads=hess.split(u))
    assert _second_opinion(hess, probs, inst.temps, grads, None, right, 1e-6, 100, on_duals=u).tolist() == [True] * 2
    assert _second_opinion(hess, probs, inst.temps, grads, None, right, 1e-6, 100).tolist() == [False] * 2


def test_ca_rev279_the_second_opinion_holds_a_map_to_the_smaller_of_the_two_answers_sizes():
    """Kills ``torch.minimum`` changed to ``torch.maximum`` in ``_second_opinion``'s ``held``: a measured map whose
    gradient is 1e-4 of the sample's largest off must disagree, even where the unmeasured maps of the answer checked
    are 1e6 times too large (held to that answer's sizes, the measured map's tolerance grew 1000-fold)."""
    from convex_attention.hessian import _second_opinion

    inst, probs, hess, grads, _ = _ca_rev279_backward()
    right = implicit_vjp(inst.h, probs, inst.temps, grads)
    keep = torch.tensor([True] + [False] * (len(right) - 1))
    top = max(float(o.abs().amax()) for o in right)
    inflated = [o * 1e6 for o in right[1:]]
    assert _second_opinion(hess, probs, inst.temps, grads, None, [right[0]] + inflated, 1e-6, 100,
                           keep=keep).tolist() == [True] * 2
    assert _second_opinion(hess, probs, inst.temps, grads, None, [right[0] + 1e-4 * top] + inflated, 1e-6, 100,
                           keep=keep).tolist() == [False] * 2


def test_ca_rev279_a_second_opinion_that_could_not_be_solved_agrees_with_nothing():
    """Kills ``_second_opinion``'s ``usable`` accepting any relative residual (``relres <= 1``): with no iteration
    allowed its solve is ``w = 0``, unsolved, and it must not agree with the gradient formed at ``w = 0``."""
    from convex_attention.hessian import _recentred, _second_opinion

    inst, probs, hess, grads, _ = _ca_rev279_backward()
    at_zero = [DualHessian.apply_J(p, _recentred(p, v), t) for p, v, t in zip(probs, grads, inst.temps)]
    assert _second_opinion(hess, probs, inst.temps, grads, None, at_zero, 1e-6, 0).tolist() == [False] * 2
    right = implicit_vjp(inst.h, probs, inst.temps, grads)
    assert _second_opinion(hess, probs, inst.temps, grads, None, right, 1e-6, 100).tolist() == [True] * 2


def test_ca_rev279_a_sample_solved_by_the_cholesky_retry_is_not_marked_as_solved_by_the_pseudo_inverse(monkeypatch):
    """Kills ``by_pseudo_inverse[rows] = again[3] & spectral`` losing its ``& spectral``: block-Jacobi allowed 2
    iterations leaves both samples unsolved and the dense Hessian's Cholesky retry solves them; they are not marked
    as the pseudo-inverse's (whose second opinion would then be the Cholesky-preconditioned solve, not the
    pseudo-inverse that has not solved them)."""
    import inspect

    import convex_attention.hessian as hessian_module

    inst, probs, _, grads, _ = _ca_rev279_backward()
    seen = []
    real = hessian_module._refined

    def spy(*args, **kwargs):
        seen.append(inspect.signature(real).bind(*args, **kwargs).arguments["by_pseudo_inverse"].clone())
        return real(*args, **kwargs)

    monkeypatch.setattr(hessian_module, "_refined", spy)
    implicit_vjp(inst.h, probs, inst.temps, grads, max_iter=2, dense_limit=0)
    assert len(seen) == 1 and seen[0].tolist() == [False, False]


def test_ca_rev279_a_signal_held_exactly_under_a_large_constant_is_not_zeroed_as_rounding():
    """Kills the implicit backward's noise screen sized on the incoming gradients ``v`` instead of the recentred
    ``v − <p, v>``: ``v = 2^27 + s`` with ``s`` a few units in the last place of 2^27 (held exactly) has the
    gradient of ``s`` alone (a constant moves nothing); sized on ``v`` the screen read its right-hand side as
    rounding and returned 0."""
    inst, probs, _, _, g = _ca_rev279_backward()
    ulp = 2.0 ** -25
    signal = [torch.randint(-8, 9, p.shape, generator=g).to(torch.float64) * ulp for p in probs]
    want = implicit_vjp(inst.h, probs, inst.temps, signal)
    got = implicit_vjp(inst.h, probs, inst.temps, [2.0 ** 27 + s for s in signal])
    top = max(float(w.abs().max()) for w in want)
    assert top > 0 and max(float((a - b).abs().max()) for a, b in zip(got, want)) <= 1e-6 * top


def test_ca_rev279_solve_psd_solves_a_right_hand_side_far_below_unit_size_in_float32():
    """Kills dropping solve_psd's own scaling to unit size (``_unit_scaled``; implicit_vjp scales its inputs, so
    only a direct caller sees it): a float32 right-hand side of 1e-25 (its conjugate gradients' inner products
    underflow) is solved as the same system at unit size, scaled."""
    inst, probs, hess, rhs = _ca_rev279_system()
    probs32, rhs32 = [p.float() for p in probs], rhs.float()
    w, _, _, solved = solve_psd(hess, probs32, inst.temps, rhs32, 1e-5, 200, dense_limit=0)
    tiny_w, relres, _, tiny_solved = solve_psd(hess, probs32, inst.temps, rhs32 * 1e-25, 1e-5, 200, dense_limit=0)
    assert bool(solved.all()) and bool(tiny_solved.all()) and float(relres.max()) <= 1e-5
    torch.testing.assert_close(tiny_w.double() * 1e25, w.double(), rtol=1e-3, atol=1e-3 * float(w.abs().max()))


# ---- ca_rev285 (the survivors of ca_rev279's mutation testing)


def _ca_rev285_in_the_range_of_A(seed=7, bits=40):
    """The mixed two-resolution system's two samples (maps 0 and 2 joined by edge 0), a dyadic loss ``s`` on its maps,
    and ``v = s + A x`` with ``x`` integers up to 2^bits on edge 0 only: exact (52 bits), and ``A x`` moves no gradient
    (``θ̄ = J (v − A w)``, ``w`` moves by ``x``), so ``v``'s gradients are ``s``'s, but maps 0 and 2 form theirs as
    the difference of terms 2^bits times larger (at 2^40, 2e2 times what float64's rounding lets them resolve to
    1e-6)."""
    inst, probs, hess, _, _ = _ca_rev279_backward()
    g = torch.Generator().manual_seed(seed)
    s = [torch.randint(-512, 513, p.shape, generator=g).to(torch.float64) / 64 for p in probs]
    x = torch.zeros(2, hess.dim, dtype=torch.float64)
    x[:, hess.offsets[0]:hess.offsets[1]] = torch.randint(-2 ** bits, 2 ** bits, (2, hess.offsets[1]),
                                                          generator=g).double()
    v = [sk + ak for sk, ak in zip(s, hess.apply_A(x))]
    assert all(torch.equal(vk - ak, sk) for vk, ak, sk in zip(v, hess.apply_A(x), s))  # exact
    assert [bool((ak != 0).any()) for ak in hess.apply_A(x)] == [True, False, True, False]
    return inst, probs, hess, s, v


def test_ca_rev285_a_sample_with_one_map_beyond_rounding_is_refused():
    """Kills ``_beyond_rounding``'s ``.any(1)`` changed to ``.all(1)``: only maps 0 and 2 of each sample are beyond
    float64's rounding (:func:`_ca_rev285_in_the_range_of_A`); the sample is refused (its maps come back up to 0.18 of
    themselves off where they are left out of ``measured``).  Checked map by map on the bound itself: the whole
    backward refuses the sample either way, its refinements not settling."""
    from convex_attention.hessian import _beyond_rounding, _cancelling, _formed, _right_hand_side, gradient_rtol

    inst, probs, hess, s, v = _ca_rev285_in_the_range_of_A()
    centred, rhs = _right_hand_side(hess, probs, inst.temps, v)
    w = solve_psd(hess, probs, inst.temps, rhs, 1e-10, 100, dense_limit=hess.dim)[0]
    out, Aw = _formed(hess, probs, inst.temps, v, centred, w, None)
    cancelling = _cancelling(probs, inst.temps, v, centred, Aw, None)
    tol, rows = gradient_rtol(torch.float64), torch.arange(2)
    for k in range(4):  # map by map: maps 0 and 2 alone are beyond rounding
        alone = torch.zeros_like(cancelling)
        alone[:, k] = cancelling[:, k]
        assert _beyond_rounding(out, alone, tol, torch.float64, rows).tolist() == ([0, 1] if k in (0, 2) else [])
    with pytest.raises(ImplicitSolveError, match="could not resolve") as err:
        implicit_vjp(inst.h, probs, inst.temps, v)
    assert err.value.rows == [0, 1]


def test_ca_rev285_an_unmeasured_maps_rounding_does_not_refuse_the_measured_maps():
    """Kills ``_refined`` holding the maps ``measured`` leaves out to their rounding (``cancelling`` not masked by
    ``keep``): map 1's loss is a constant 2^80 at probabilities summing to 1 + 2^-50, so its recentred gradient is a
    constant ~1e8 (``J`` of it is exactly 0, ``J`` subtracting the most probable cell first), whose bound of the
    terms that cancel is beyond float64's rounding.  Measured, map 1 refuses the sample; left out, the other maps come
    back within 1e-12 of the gradient without the constant."""
    inst, probs, _, grads, _ = _ca_rev279_backward()
    probs = list(probs)
    probs[1] = probs[1] * (1 + 2.0 ** -50)
    assert all(float((p.flatten(1).sum(1) - 1).abs().min()) > 0 for p in probs[1:2])
    v = list(grads)
    v[1] = torch.full_like(grads[1], 2.0 ** 80)
    want = implicit_vjp(inst.h, probs, inst.temps, [g if k != 1 else torch.zeros_like(g) for k, g in enumerate(v)])
    with pytest.raises(ImplicitSolveError, match="could not resolve"):
        implicit_vjp(inst.h, probs, inst.temps, v)
    got = implicit_vjp(inst.h, probs, inst.temps, v, measured=[True, False, True, True])
    for k in (0, 2, 3):
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-12 * float(want[k].abs().max()))


def test_ca_rev285_a_loss_on_the_duals_alone_is_refined_like_any_other():
    """Kills ``_refined`` told the right-hand side was rounding (``zeroed = noise``) where the loss is on the duals:
    with no loss on the maps the maps' part of the right-hand side is 0, rounding alone, but the duals' is the whole
    system.  Solved by block-Jacobi to a loose rtol (1e-3), the sample is refined to GRADIENT_RTOL (1e-6) of a tight
    solve; not refined it came back ~1e-3 off."""
    inst, probs, hess, grads, g = _ca_rev279_backward()
    u = hess.split(hess.centre(torch.randn(2, hess.dim, generator=g, dtype=torch.float64)))
    zero = [torch.zeros_like(v) for v in grads]
    want = implicit_vjp(inst.h, probs, inst.temps, zero, dual_grads=u, rtol=1e-13)
    got = implicit_vjp(inst.h, probs, inst.temps, zero, dual_grads=u, rtol=1e-3, dense_limit=0)
    top = max(float(w.abs().max()) for w in want)
    assert top > 0 and max(float((a - b).abs().max()) for a, b in zip(got, want)) <= 1e-6 * top


def test_ca_rev285_a_right_hand_side_of_rounding_alone_is_not_refused_for_its_terms_rounding():
    """Kills dropping ``~zeroed`` from ``_refined``'s candidates: a loss constant (1) on maps 1-3 at probabilities
    summing to 1 + 2^-50 (recentred: constants of rounding size, whose ``J`` is exactly 0) and 1e-32 on map 0, below
    the rounding of the right-hand side, which is zeroed: the gradient is 0 (to 1e-30), not an ImplicitSolveError
    for a map whose terms' rounding exceeds its (zero) gradient."""
    inst, probs, _, grads, g = _ca_rev279_backward()
    probs = [p * (1 + 2.0 ** -50) for p in probs]
    v = [1e-32 * grads[0]] + [torch.ones_like(x) for x in grads[1:]]
    got = implicit_vjp(inst.h, probs, inst.temps, v)
    assert max(float(o.abs().max()) for o in got) <= 1e-30
    assert float(got[0].abs().max()) > 0  # (the map whose gradient is the rounding's largest)


def test_ca_rev285_a_restarted_correction_is_asked_for_rtol_of_the_whole_right_hand_side(monkeypatch):
    """Kills solve_psd's restart asking its correction for ``rtol`` of its own right-hand side instead of
    ``rtol · ‖rhs‖ / ‖remainder‖``: ``w`` kicked by 100 times the solution where its true residual is first measured
    (as ca_rev279's restart test), the dense path's correction to rtol (1e-10) of the remainder left the whole
    system at 1.2e-10, unsolved; asked for rtol of ``rhs`` it is solved (3e-14)."""
    import convex_attention.hessian as hessian_module

    monkeypatch.setattr(hessian_module, "STALL_ITERATIONS", 10 ** 6)
    inst, probs, hess, rhs = _ca_rev279_system()
    calls = _ca_rev279_kick_w_once(monkeypatch, hess, rhs.shape, 1e2)
    _, relres, _, solved = solve_psd(hess, probs, inst.temps, rhs, 1e-10, 1000, dense_limit=hess.dim)
    assert calls and bool(solved.all()) and float(relres.max()) <= 1e-10, relres


def _ca_rev285_right_or_refused(bits):
    """Per sample of :func:`_ca_rev285_in_the_range_of_A`'s system (``x`` up to ``2^bits``), maps 0 and 2 left out of
    ``measured``: ``"refused"`` or the measured maps' (1 and 3) largest error, relative to their largest gradient, off
    ``s``'s gradients (which are ``v``'s) solved to rtol 1e-13."""
    inst, probs, _, s, v = _ca_rev285_in_the_range_of_A(bits=bits)
    outcome = []
    for i in range(2):
        one = [t[i:i + 1] for t in probs]
        want = implicit_vjp(inst.h, one, inst.temps, [t[i:i + 1] for t in s], rtol=1e-13)
        try:
            got = implicit_vjp(inst.h, one, inst.temps, [t[i:i + 1] for t in v], measured=[False, True, False, True])
        except ImplicitSolveError:
            outcome.append("refused")
            continue
        outcome.append(max(float((got[k] - want[k]).abs().max() / want[k].abs().max()) for k in (1, 3)))
    return outcome


@pytest.mark.parametrize("bits", [16, 24, 30, 40])
def test_ca_rev285_measured_maps_are_right_or_refused_where_unmeasured_scored_maps_carry_large_terms(bits):
    """Maps 0 and 2 carry terms up to 2^bits that cancel (``v − A w`` with ``v`` in the range of ``A``) and are left out
    of ``measured``; maps 1 and 3 are measured, their own terms O(1).  Each sample's measured gradients are right to
    GRADIENT_RTOL (1e-6) of themselves, or the sample is refused.  The maps left out were screened on nothing:
    ``w``'s error, a solve's to rtol of a right-hand side 2^bits larger, spread over every edge and came back unrefined
    (worse sample: 2^24 2.3e-6 of themselves, 2^30 1.8e-4, 2^40 0.13, returned); flagged and refined, at 2^40 sample 0
    still came back 9.4e-6 off, the rounding of the maps left out reaching ``w`` where no correction sees it, now
    measured (``_reached_by_rounding``) and refused.  That measure is a worst case (about 750x the error at 2^40): at
    2^30 it refuses sample 1, which comes back 1.2e-7 off without it.  At 2^16 and 2^24 both are returned (a probe
    that refused every sample it measured would pass the rest: ca_rev286)."""
    outcome = _ca_rev285_right_or_refused(bits)
    for got in outcome:
        assert got == "refused" or got <= 1e-6, outcome
    if bits <= 24:
        assert "refused" not in outcome, outcome


def test_ca_rev285_the_rounding_of_a_map_left_out_refuses_only_where_it_reaches_the_measured_maps():
    """The other side of ``_reached_by_rounding``: map 1's constant loss of 2^80 (``J`` of it exactly 0, so none of its
    rounding reaches ``w``) is beyond its rounding, and left out it is probed; the measured maps' gradients are returned
    (:func:`test_ca_rev285_an_unmeasured_maps_rounding_does_not_refuse_the_measured_maps` checks their values), where
    the probe's estimate of the rounding's reach is far below their tolerance."""
    from convex_attention.hessian import _held_to, _reached_by_rounding, _right_hand_side, _sizes, gradient_rtol

    inst, probs, hess, grads, _ = _ca_rev279_backward()
    probs = list(probs)
    probs[1] = probs[1] * (1 + 2.0 ** -50)
    v = list(grads)
    v[1] = torch.full_like(grads[1], 2.0 ** 80)
    _, rhs = _right_hand_side(hess, probs, inst.temps, v)
    w = solve_psd(hess, probs, inst.temps, rhs, 1e-13, 100, dense_limit=hess.dim)[0]
    out = implicit_vjp(inst.h, probs, inst.temps, v, measured=[True, False, True, True])
    tol = gradient_rtol(torch.float64)
    keep = torch.tensor([True, False, True, True])
    held = _held_to(_sizes(out), tol)
    assert not _reached_by_rounding(hess, probs, inst.temps, w, rhs, None, keep, held, tol, 100, 0).any()
    # and it refuses where its bound is held to less: the same measurement at a tolerance 1e12 times tighter
    assert _reached_by_rounding(hess, probs, inst.temps, w, rhs, None, keep, held * 1e-12, tol, 100, 0).all()


# ---- ca_rev286 (hostile review of the ca_rev285 fix)


def test_ca_rev286_nothing_measured_is_never_refused_by_the_rounding_probe():
    """The axial graph (seed 1), temperatures spread 1e-4..1e8, a loss 1e6 on map 0: with ``measured=[False] * M`` (the
    cvxpylayers judge's call, held to its first solve's residual alone: ca_rev120) no measured map can be reached by
    any rounding, so nothing is flagged or probed.  ca_rev285's first fix flagged the scored maps left out even
    there, and refused samples 1 and 2 (its probe's conjugate gradients stopped at a relative residual of 1e3 on this
    near-singular Hessian, 78 % of the random-signed rounding outside its range), which the judge turns into a
    SolverFailure: 9 of 172 judged calls over the graph cases.  Returned, finite."""
    inst = random_graph_instance("axial", batch=4, seed=1)
    temps = [t * (1e8 if k % 2 else 1e-4) for k, t in enumerate(inst.temps)]
    probs = [p.detach() for p in ca.solve(inst.scores, inst.h, "dual", temperature=temps, tol=1e-9,
                                          max_iter=5000).probs]
    g = torch.Generator().manual_seed(1)
    v = [torch.randn(p.shape, generator=g, dtype=torch.float64) * (1e6 if k == 0 else 1) for k, p in enumerate(probs)]
    for i in (1, 2):
        got = implicit_vjp(inst.h, [p[i:i + 1] for p in probs], temps, [x[i:i + 1] for x in v], measured=[False] * 3)
        assert all(bool(torch.isfinite(x).all()) for x in got)


def _ca_rev286_cross_map_rounding_case():
    """The axial graph (seed 1, its own temperatures), solved to tol 1e-11; a dyadic loss ``s`` and ``v = s + A x`` with
    ``x`` integers up to 2^30 on edge 0 (the draws of the review's sweep, in its order: 2^20 on each edge first), so
    maps 0 and 1 form their gradients from terms 2^30 times larger than map 2's.  ``(inst, probs, s, v)``."""
    inst = random_graph_instance("axial", batch=3, seed=1)
    probs = [p.detach() for p in ca.solve(inst.scores, inst.h, "dual", temperature=list(inst.temps), tol=1e-11,
                                          max_iter=5000).probs]
    hess = get_hessian(inst.h, "cpu")
    g = torch.Generator().manual_seed(1)
    s = [torch.randint(-512, 513, p.shape, generator=g).double() / 64 for p in probs]
    for bits, e in [(20, e) for e in range(len(inst.h.edges))] + [(30, 0)]:
        x = torch.zeros(3, hess.dim, dtype=torch.float64)
        width = hess.offsets[e + 1] - hess.offsets[e]
        x[:, hess.offsets[e]:hess.offsets[e + 1]] = torch.randint(-2 ** bits, 2 ** bits, (3, width),
                                                                  generator=g).double()
    v = [sk if ak is None else sk + ak for sk, ak in zip(s, hess.apply_A(x))]
    return inst, probs, s, v


@pytest.mark.xfail(strict=True, reason="ca_rev286, open: a map's gradient is bounded by its own terms' rounding, not "
                   "by the rounding other maps' far larger terms carry into w: map 2 comes back 1.31e-6 of itself off")
def test_ca_rev286_a_map_is_right_where_other_maps_terms_are_2_to_the_30_larger():
    """:func:`_ca_rev286_cross_map_rounding_case`, sample 1, every map measured: maps 0 and 1 are right (4.6e-8,
    1.6e-8 of themselves), but map 2, whose own terms are O(1) and whose gradient is 0.09 of the largest (held to
    itself), is 1.31e-6 of itself off the gradient of ``s`` (to which ``v``'s is equal), returned: the rounding of
    maps 0 and 1's terms (each within its own bound, eps·1.04 against 1e-6 of 1.1) reaches map 2 through ``w``.  The
    same with maps 0 and 1 left out of ``measured`` (the probe of ca_rev285 runs only where a map left out is beyond
    its own rounding).  Right to GRADIENT_RTOL or refused is what this asks."""
    inst, probs, s, v = _ca_rev286_cross_map_rounding_case()
    want = implicit_vjp(inst.h, probs, inst.temps, s, rtol=1e-13)
    try:
        got = implicit_vjp(inst.h, [p[1:2] for p in probs], inst.temps, [t[1:2] for t in v])
    except ImplicitSolveError:
        return
    for k in range(3):
        torch.testing.assert_close(got[k][0], want[k][1], rtol=0, atol=1e-6 * float(want[k][1].abs().max()))
