"""convex_attention.bench.duals: the λ of the learned-dual rows (fitted shared, amortised)."""
import torch

import convex_attention as ca
from convex_attention.bench.duals import fit_shared_duals
from convex_attention.bench.generators import generate


def test_fitted_shared_duals_lower_the_training_consistency_loss():
    h = ca.Hierarchy.grid([(8, 8), (4, 4)])
    # scores with a fixed structure shared by all inputs: one λ can fix it
    base = generate("lesion", h, 1, seed=3)
    train = [b + 0.1 * torch.randn((32,) + b.shape[1:], dtype=torch.float64) for b in base]
    temps = [1.0, 1.0]
    lam = fit_shared_duals(h, train, temps, steps=200, dtype=torch.float64)
    zero = [torch.zeros_like(d) for d in lam]
    assert ca.consistency_loss(train, lam, h) < 0.2 * ca.consistency_loss(train, zero, h)


# ----------------------------------------------------------------------------- ca_rev56



def _rev56_reference(theta, lam, tau):
    """p(λ) and the consistency loss of the 2-level grid 8x8 -> 4x4, written out in float64
    (docs/math.md §2): η_0 = θ_0 − P_0ᵀ λ, η_1 = θ_1 + λ, p_k = softmax(η_k / τ),
    a = P_0 p_0 (2x2 sum-pooling), b = p_1, loss = mean over the batch of KL(b ‖ a)."""
    B = theta[0].shape[0]
    up = lam.repeat_interleave(2, -2).repeat_interleave(2, -1)  # P_0ᵀ λ
    eta0, eta1 = theta[0] - up, theta[1] + lam
    p0 = torch.softmax((eta0 / tau).reshape(B, -1), 1).reshape(eta0.shape)
    p1 = torch.softmax((eta1 / tau).reshape(B, -1), 1).reshape(eta1.shape)
    a = p0.reshape(B, 4, 2, 4, 2).sum((2, 4))
    loss = (p1 * (p1.log() - a.log())).flatten(1).sum(1).mean()
    return [p0, p1], float(loss)


def test_ca_rev56_a_constant_per_map_moves_neither_p_of_lambda_nor_the_consistency_loss_in_float32():
    """A constant added to a map's scores moves no p(λ) and no consistency loss (a constant per
    map changes no softmax; docs/math.md §2–3).  Scores on a 2⁻¹² grid plus 1024 are exact in
    float32, so the float32 problem *is* the float64 one; without the constant the float32
    learned_dual is 3.5e-8 off, with it 0.015 (p) and 0.023 (loss): the duals are rounded into
    θ_k + 1024 before the per-map maximum is taken off (exact takes it off first, math.md §3)."""
    h = ca.Hierarchy.grid([(8, 8), (4, 4)])
    tau = 1e-3
    g = torch.Generator().manual_seed(0)
    q = 2.0 ** 12
    theta = [torch.round(q * tau * torch.randn((4,) + s, generator=g, dtype=torch.float64)) / q for s in h.shapes]
    lam = (tau * torch.randn((1, 4, 4), generator=g)).double()  # float32 values
    ref_p, ref_loss = _rev56_reference(theta, lam, tau)
    for c in (0.0, 1024.0):
        scores = [(t + c).float() for t in theta]
        assert all(torch.equal(s.double() - c, t) for s, t in zip(scores, theta))  # the same problem, exactly
        sol = ca.solve(scores, h, "learned_dual", temperature=tau, duals=[lam.float()])
        err = max(float((p.double() - r).abs().max()) for p, r in zip(sol.probs, ref_p))
        loss = float(ca.consistency_loss(scores, [lam.float()], h, tau))
        assert err <= 1e-5, (c, err)
        assert abs(loss - ref_loss) <= 1e-5 * max(1.0, ref_loss), (c, loss, ref_loss)


def test_ca_rev56_a_constant_per_edge_on_the_duals_moves_no_p_of_lambda_in_float32():
    """The gauge (docs/math.md §2): λ_e + c gives the same g and p(λ).  The method reports its
    duals centred, but computes with them as passed: η_1 = θ_1 + λ + 1024 and
    η_0 = θ_0 − (λ + 1024) are rounded at 1024's ulp (1.2e-4) before the softmax, which 1/τ
    magnifies.  Reference: the same duals less exactly that constant, in float64."""
    h = ca.Hierarchy.grid([(8, 8), (4, 4)])
    tau = 1e-3
    g = torch.Generator().manual_seed(0)
    theta = [(tau * torch.randn((4,) + s, generator=g)).double() for s in h.shapes]  # float32 values
    for c in (0.0, 1024.0):
        passed = tau * torch.randn((1, 4, 4), generator=g) + c  # float32 duals carrying a gauge constant c
        ref_p, ref_loss = _rev56_reference(theta, passed.double() - c, tau)  # exactly the same duals up to c
        sol = ca.solve([t.float() for t in theta], h, "learned_dual", temperature=tau, duals=[passed])
        err = max(float((p.double() - r).abs().max()) for p, r in zip(sol.probs, ref_p))
        loss = float(ca.consistency_loss([t.float() for t in theta], [passed], h, tau))
        assert err <= 1e-5, (c, err)
        assert abs(loss - ref_loss) <= 1e-5 * max(1.0, ref_loss), (c, loss, ref_loss)


# ---- ca_rev216 (mutation review of 7358deb, benchmark scripts): tests that kill surviving mutants

def _ca_rev216_problem():
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    g = torch.Generator().manual_seed(1)
    return h, [torch.randn((6,) + s, generator=g, dtype=torch.float64) for s in h.shapes], [1.0, 0.5]


def test_ca_rev216_fitted_shared_duals_are_detached_and_fitted_at_the_documented_rate():
    """The λ returned carry no graph of the fit (a learned_dual row's time would include its backward), and
    the default rate is 0.05: one Adam step moves each λ entry by 0.05."""
    h, train, temps = _ca_rev216_problem()
    lam = fit_shared_duals(h, train, temps, steps=1, dtype=torch.float64)
    assert all(not d.requires_grad and d.grad_fn is None for d in lam)
    assert torch.equal(lam[0], fit_shared_duals(h, train, temps, steps=1, dtype=torch.float64, lr=0.05)[0])
    assert torch.allclose(lam[0].abs(), torch.full_like(lam[0], 0.05))


def test_ca_rev216_the_amortiser_is_drawn_from_its_seed_trained_for_its_steps_and_left_in_eval_mode(monkeypatch):
    """fit_amortiser: the same seed gives the same network, another seed another; the global generator is not
    advanced; steps > 0 trains it (steps = 0 does not); the module comes back in eval mode."""
    from convex_attention.bench.duals import fit_amortiser

    h, train, temps = _ca_rev216_problem()

    def params(module):
        return torch.cat([p.detach().flatten() for p in module.parameters()])

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    first = fit_amortiser(h, train, temps, steps=0, dtype=torch.float64, seed=3)
    assert torch.equal(torch.rand(3), expected)  # the global generator untouched
    assert not first.training
    assert torch.equal(params(first), params(fit_amortiser(h, train, temps, steps=0, dtype=torch.float64, seed=3)))
    assert not torch.equal(params(first), params(fit_amortiser(h, train, temps, steps=0, dtype=torch.float64, seed=4)))
    from convex_attention.bench import duals

    fits = []
    monkeypatch.setattr(duals.nn, "fit_amortised_duals", lambda module, train, steps: fits.append(steps))
    trained = fit_amortiser(h, train, temps, steps=2, dtype=torch.float64, seed=3)
    assert fits == [2] and not trained.training
