import pytest
import torch

import convex_attention as ca
from convex_attention.baselines.attributions import BASELINES, gradcam
from convex_attention.baselines.paper_loss import paper_code_consistency_loss
from convex_attention.paper.models import AttentionUNet


def test_every_attribution_has_the_expected_shape_and_is_finite():
    torch.manual_seed(0)
    model = AttentionUNet(method="softmax", width=4, image_size=32, embed_channels=8)
    images, targets = torch.randn(2, 4, 32, 32), torch.tensor([1, 1])
    for level, side in ((0, 8), (1, 4)):
        cam = gradcam(model, images, targets, level)
        assert cam.shape == (2, side, side) and (cam >= 0).all()
    for name, fn in BASELINES.items():
        attr = fn(model, images.clone().requires_grad_(), targets)
        assert attr.shape == (2, 4, 32, 32) and torch.isfinite(attr).all(), name
        assert attr.abs().sum() > 0, name


def test_attributions_are_taken_in_eval_mode_and_leave_every_module_s_mode_as_it_was():
    """The attributions used to leave a model in training in eval mode (found by a review)."""
    torch.manual_seed(0)
    model = AttentionUNet(method="softmax", width=4, image_size=32, embed_channels=8)
    images, targets = torch.randn(2, 4, 32, 32), torch.tensor([1, 0])
    frozen = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    frozen.eval()  # a user's mixed modes: one batch norm frozen inside a model in training
    modes = {name: m.training for name, m in model.named_modules()}
    reference = gradcam(model.eval(), images, targets, 0), BASELINES["deeplift"](model, images, targets)
    model.train()
    frozen.eval()
    for attributed, expected in zip((gradcam(model, images, targets, 0),
                                     BASELINES["deeplift"](model, images, targets)), reference):
        torch.testing.assert_close(attributed, expected)  # batch norms used their running statistics
        assert {name: m.training for name, m in model.named_modules()} == modes


def test_attributions_work_on_a_learned_dual_model_too():
    model = AttentionUNet(method="learned_dual", width=4, image_size=32, embed_channels=8)
    images, targets = torch.randn(1, 4, 32, 32), torch.tensor([1])
    assert BASELINES["lrp"](model, images, targets).shape == (1, 4, 32, 32)


def test_paper_code_loss_differs_from_per_sample_normalisation_except_for_one_sample():
    g = torch.Generator().manual_seed(0)
    theta0 = torch.randn(4, 8, 8, generator=g, dtype=torch.float64)
    theta1 = torch.randn(4, 4, 4, generator=g, dtype=torch.float64)
    lam = torch.randn(4, 4, generator=g, dtype=torch.float64)
    h = ca.Hierarchy.grid([(8, 8), (4, 4)])
    ours = ca.consistency_loss([theta0, theta1], [lam], h)
    theirs = paper_code_consistency_loss(theta0, theta1, lam)
    assert not torch.isclose(ours, theirs, rtol=1e-3)
    one = ca.consistency_loss([theta0[:1], theta1[:1]], [lam], h)
    torch.testing.assert_close(one, paper_code_consistency_loss(theta0[:1], theta1[:1], lam))


# ----------------------------------------------------------------------------- LinSATNet on given maps

def _given_axial(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = ca.Graph.axial((4, 3))
    theta = 2 * torch.randn(batch, 4, 3, generator=g, dtype=torch.float64)
    feasible = ca.solve([torch.randn(1, *s, generator=g, dtype=torch.float64) for s in h.shapes], h, "dual",
                        tol=1e-13).probs
    return h, theta, {1: feasible[1], 2: feasible[2]}


def _binary_entropy_reference(theta, h, given, tau):
    """LinSATNet's own problem, written out with CVXPY: max <θ, x> + τ Σ [h(x) + h(1 − x)], E x = f."""
    import cvxpy as cp
    import numpy as np

    E = np.concatenate([aggregation(h, e) for e in range(h.num_edges)])
    f = np.concatenate([given[b].flatten().numpy() for _, b in h.edges])
    out = []
    for row in theta.reshape(theta.shape[0], -1).numpy():
        x = cp.Variable(row.shape[0])
        problem = cp.Problem(cp.Maximize(row @ x + tau * cp.sum(cp.entr(x) + cp.entr(1 - x))), [E @ x == f])
        problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
        out.append(x.value)
    return torch.from_numpy(np.stack(out))


def aggregation(h, e):
    from helpers import aggregation_matrix

    return aggregation_matrix(h, e)


@pytest.mark.slow  # LinSATNet's own problem solved and compared with ours (1.2 s); its other tests stay fast
def test_linsat_solves_its_own_binary_entropy_problem_which_is_near_but_not_ours():
    pytest.importorskip("LinSATNet")
    from convex_attention.baselines.linsat import linsat_solve

    h, theta, given = _given_axial()
    tau = 0.7
    probs = linsat_solve([theta, None, None], h, given, temperature=tau, max_iter=500)
    mine = _binary_entropy_reference(theta, h, given, tau)
    ours = ca.solve([theta, None, None], h, "dual", temperature=[tau, 1.0, 1.0], given=given, tol=1e-12).probs[0]
    to_own = float((probs[0].flatten(1) - mine).abs().max())
    to_ours = float((probs[0].flatten(1) - ours.flatten(1)).abs().max())
    # it stops once every constraint holds to 1e-3 in log space: its own optimum to about that
    assert to_own < 1e-3 < to_ours, (to_own, to_ours)
    assert float(ca.metrics.violation(probs, h).max()) < 2e-3
    for k in (1, 2):
        assert torch.equal(probs[k], given[k].expand_as(probs[k]))


def test_linsat_differentiates_by_unrolling_and_per_sample_given_maps_loop():
    pytest.importorskip("LinSATNet")
    from convex_attention.baselines.linsat import linsat_solve

    h, theta, given = _given_axial(batch=3)
    x = theta.clone().requires_grad_()
    probs = linsat_solve([x, None, None], h, given, temperature=1.0, max_iter=20)
    (grad,) = torch.autograd.grad((probs[0] * torch.arange(12.0, dtype=torch.float64).reshape(4, 3)).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # per-sample given maps: one call per sample, the same iterations as one batched call (LinSATNet
    # stops early only once every sample of a call meets its 1e-3 test: 5 iterations never do here)
    per_sample = {k: q.expand(3, *q.shape[1:]).clone() for k, q in given.items()}
    looped = linsat_solve([theta, None, None], h, per_sample, temperature=1.0, max_iter=5)
    batched = linsat_solve([theta, None, None], h, given, temperature=1.0, max_iter=5)
    torch.testing.assert_close(looped[0], batched[0])


@pytest.mark.parametrize("build, given_maps, message", [
    (lambda: ca.Graph([(4, 4), (2, 2), (1, 1)], [(0, 1), (1, 2)]), (2,), "edge 0 .* both maps are scored"),
    (lambda: ca.Graph.star([(4, 4), (4, 4)], (2, 2)), (2,), "2 scored maps"),
    (lambda: ca.Graph([(4, 4), (2, 2)], [(0, 1)]), (0,), "given map pooled onto a scored map"),
])
def test_linsat_refuses_what_it_cannot_express(build, given_maps, message):
    from convex_attention.baselines.linsat import check_linsat_structure

    with pytest.raises(ValueError, match=message):
        check_linsat_structure(build(), given_maps)


def test_linsat_missing_is_an_import_error_naming_the_install(monkeypatch):
    import builtins

    from convex_attention.baselines import linsat

    real = builtins.__import__

    def no_linsat(name, *args, **kwargs):
        if name.startswith("LinSATNet"):
            raise ImportError("No module named 'LinSATNet'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_linsat)
    h, theta, given = _given_axial()
    with pytest.raises(ImportError, match="pip install linsatnet"):
        linsat.linsat_solve([theta, None, None], h, given)
