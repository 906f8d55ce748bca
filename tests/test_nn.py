import copy
import math

import pytest
import torch

import convex_attention as ca

H = ca.Hierarchy.grid([(8, 8), (4, 4), (2, 2)])


def test_learned_duals_one_parameter_per_constraint_shared_over_batch():
    duals = ca.LearnedDuals(H)
    params = list(duals.parameters())
    assert [tuple(p.shape) for p in params] == [(1, 4, 4), (1, 2, 2)]
    assert all((p == 0).all() for p in params)
    out = duals()
    assert len(out) == 2 and out[0] is params[0]


@pytest.mark.parametrize("method", ["softmax", "exact", "dual", "learned_dual"])
def test_consistent_attention_module(method):
    module = ca.ConsistentAttention(H, method=method, temperature=[0.5, 1.0, 2.0])
    scores = [torch.randn((3,) + s, requires_grad=True) for s in H.shapes]
    sol = module(scores)
    assert isinstance(sol, ca.Solution) and sol.method == method
    loss = sum(p.square().sum() for p in sol.probs)
    if method == "learned_dual":
        loss = loss + module.consistency_loss(scores)
    loss.backward()
    assert all(s.grad is not None for s in scores)
    if method == "learned_dual":
        assert all(p.grad is not None for p in module.learned_duals.parameters())
        assert len(list(module.parameters())) == 2
    else:
        assert len(list(module.parameters())) == 0


def test_learned_duals_reduce_the_consistency_loss_when_trained():
    torch.manual_seed(0)
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    module = ca.ConsistentAttention(h, method="learned_dual")
    scores = [torch.randn(16, 4, 4) + torch.randn(1, 4, 4) * 2, torch.randn(16, 2, 2)]
    opt = torch.optim.Adam(module.parameters(), lr=0.1)
    first = float(module.consistency_loss(scores).detach())
    for _ in range(100):
        opt.zero_grad()
        loss = module.consistency_loss(scores)
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first
    assert module(scores).violation.mean() < ca.solve(scores, h, "softmax").violation.mean()


def test_module_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown method"):
        ca.ConsistentAttention(H, method="sparsemax")


@pytest.mark.parametrize("ndim, spatial", [(1, (10,)), (2, (6, 5)), (3, (4, 3, 2))])
def test_score_head_shapes(ndim, spatial):
    head = ca.ScoreHead(in_channels=7, embed_channels=5, ndim=ndim)
    out = head(torch.randn((2, 7) + spatial))
    assert out.shape == (2,) + spatial


# ------------------------------------------------------------------ attend: the layer a model uses

@pytest.mark.parametrize("method", ["softmax", "exact", "dual", "learned_dual"])
def test_attend_gives_maps_solution_and_aux_loss(method):
    module = ca.ConsistentAttention(H, method=method, temperature=[0.5, 1.0, 2.0])
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    scores = [torch.randn((3,) + s, requires_grad=True) for s in H.shapes]
    out = module.attend(scores)
    assert isinstance(out, ca.Attended)
    assert len(out.maps) == 3 and all(m is p for m, p in zip(out.maps, out.solution.probs))
    assert out.aux_loss.dim() == 0
    if method == "learned_dual":
        # the paper's forward pass: per-level softmax maps, consistency through the loss
        soft = ca.solve(scores, H, "softmax", temperature=[0.5, 1.0, 2.0])
        for m, p in zip(out.maps, soft.probs):
            torch.testing.assert_close(m, p)
        assert out.solution.method == "softmax"  # the maps are the softmaxes, whatever the module's method
        torch.testing.assert_close(out.aux_loss, module.consistency_loss(scores))
        assert float(out.aux_loss.detach()) > 0
        (sum(m.square().sum() for m in out.maps) + out.aux_loss).backward()
        assert all(p.grad is not None for p in module.learned_duals.parameters())
    else:
        for m, p in zip(out.maps, module(scores).probs):
            torch.testing.assert_close(m, p)
        assert float(out.aux_loss.detach()) == 0.0


def test_forward_still_returns_a_solution_of_the_method():
    module = ca.ConsistentAttention(H, method="learned_dual")
    sol = module([torch.randn((2,) + s) for s in H.shapes])
    assert isinstance(sol, ca.Solution) and sol.method == "learned_dual"


# ------------------------------------------------------------------ checks at construction

@pytest.mark.parametrize("kwargs, exc, message", [
    ({"method": "exact", "tol": 1e-3}, TypeError, "takes no option"),
    ({"method": "dual", "eps": 1e-3}, TypeError, "accepts"),
    ({"method": "dual", "tol": -1.0}, ValueError, "tol"),
    ({"method": "dual", "max_iter": 0}, ValueError, "max_iter"),
    ({"method": "cvxpylayers", "eps": -1.0}, ValueError, "eps"),
    ({"method": "exact", "temperature": -2.0}, ValueError, "positive"),
    ({"method": "exact", "temperature": torch.ones(5)}, ValueError, "per level, never per sample"),
    ({"method": "cvxpylayers", "temperature": torch.nn.Parameter(torch.tensor(1.0))}, TypeError,
     "cannot differentiate"),
    ({"method": "exact", "check_finite": "yes"}, TypeError, "check_finite"),
    ({"method": "exact", "duals": "amortised"}, ValueError, "only used by methods that need duals"),
    ({"method": "learned_dual", "duals": "per_sample"}, ValueError, "duals must be one of"),
    ({"method": "exact", "duals": ca.LearnedDuals(H)}, ValueError, "only used by methods that need them"),
])
def test_construction_checks_everything(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        ca.ConsistentAttention(H, **kwargs)


def test_a_parameter_temperature_is_learned_with_the_module():
    tau = torch.nn.Parameter(torch.tensor([0.5, 1.0, 2.0]))
    module = ca.ConsistentAttention(H, method="exact", temperature=tau)
    assert any(p is tau for p in module.parameters())
    scores = [torch.randn((2,) + s) for s in H.shapes]
    sum((p * torch.randn_like(p)).sum() for p in module(scores).probs).backward()
    assert tau.grad is not None and tau.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="leaf"):
        ca.ConsistentAttention(H, method="exact", temperature=tau * 2)


def test_a_parameter_temperature_is_registered_whatever_the_grad_mode_and_its_own_requires_grad():
    """Built under torch.no_grad() (an inference script), or frozen, the Parameter was dropped
    for floats: a strict load of the trained state failed, a loose one ignored the learned
    temperatures (probabilities off by 0.12); found by a hostile review."""
    trained = ca.ConsistentAttention(H, method="exact", temperature=torch.nn.Parameter(torch.tensor([0.25, 3.0, 1.0])))
    scores = [torch.randn((2,) + s) for s in H.shapes]
    with torch.no_grad():
        loaded = ca.ConsistentAttention(H, method="exact", temperature=torch.nn.Parameter(torch.ones(3)))
        loaded.load_state_dict(trained.state_dict())  # strict
        for a, b in zip(loaded(scores).probs, trained(scores).probs):
            torch.testing.assert_close(a, b)
    frozen = ca.ConsistentAttention(H, method="exact", temperature=torch.nn.Parameter(torch.ones(3),
                                                                                   requires_grad=False))
    assert [name for name, _ in frozen.named_parameters()] == ["temperature"]


def test_temperatures_that_require_grad_are_parameters_the_module_registers():
    tau = torch.nn.Parameter(torch.tensor(0.5))
    module = ca.ConsistentAttention(H, method="exact", temperature=[tau, 1.0, 2.0])
    assert any(p is tau for p in module.parameters()) and "_temperature_parameters.0" in module.state_dict()
    scores = [torch.randn((2,) + s) for s in H.shapes]
    for _ in range(2):  # a computed tensor in the list kept a stale graph: the second backward failed
        sum(p.square().sum() for p in module(scores).probs).backward()
    assert tau.grad is not None and float(tau.grad.abs()) > 0
    # a Parameter torch replaces is the one used (the list kept a stale reference to the old one)
    module.load_state_dict({"_temperature_parameters.0": torch.tensor(3.0)}, assign=True)
    assert float(module.temperature[0].detach()) == 3.0 and module.temperature[0] is module._temperature_parameters[0]
    for a, b in zip(module(scores).probs, ca.solve(scores, H, "exact", temperature=[3.0, 1.0, 2.0]).probs):
        torch.testing.assert_close(a, b)
    log_tau = torch.nn.Parameter(torch.tensor(0.0))
    with pytest.raises(ValueError, match="leaf nn.Parameter"):
        ca.ConsistentAttention(H, method="exact", temperature=[log_tau.exp(), 1.0, 1.0])
    with pytest.raises(ValueError, match="must be an nn.Parameter"):  # not registered: no optimiser would see it
        ca.ConsistentAttention(H, method="exact", temperature=torch.ones(3, requires_grad=True))


# ------------------------------------------------------------------ score heads

@pytest.mark.parametrize("kwargs, message", [
    ({"in_channels": 4, "ndim": 4}, "ndim must be 1, 2 or 3"),
    ({"in_channels": 4, "ndim": 0}, "ndim must be 1, 2 or 3"),
    ({"in_channels": 4, "ndim": True}, "ndim must be 1, 2 or 3"),  # a bool is not a dimension count
    ({"in_channels": True}, "in_channels"),
    ({"in_channels": 0}, "in_channels"),
    ({"in_channels": 2.0}, "in_channels"),
    ({"in_channels": 4, "embed_channels": -1}, "embed_channels"),
    ({"in_channels": 4, "scale": "free"}, "scale must be one of"),
])
def test_score_head_checks_its_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ca.ScoreHead(**kwargs)


def test_score_head_checks_its_input():
    with pytest.raises(ValueError, match="spatial dimension"):
        ca.ScoreHead(3)(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="spatial dimension"):  # too many dimensions, not only too few
        ca.ScoreHead(3, ndim=1)(torch.randn(2, 3, 4, 5))


def _peak(scores):
    p = torch.softmax(scores.flatten(1), dim=1)
    return p.shape[1] * p.amax(1)


def test_learned_gain_head_starts_as_the_bounded_head_and_can_sharpen_beyond_its_bound():
    torch.manual_seed(0)
    bounded = ca.ScoreHead(6, embed_channels=8, scale="bounded")
    learned = ca.ScoreHead(6, embed_channels=8, scale="learned")
    learned.load_state_dict(bounded.state_dict(), strict=False)
    assert float(learned.gain().detach()) == 1.0 and bounded.gain() == 1.0
    features = torch.randn(4, 6, 8, 8)
    torch.testing.assert_close(learned(features), bounded(features))
    # the bounded head: |θ − b| ≤ ‖w‖, so N·max p ≤ N e^{2‖w‖} / (e^{2‖w‖} + N − 1)
    w = float(bounded.score.weight.detach().norm())
    N = 64
    bound = N * math.exp(2 * w) / (math.exp(2 * w) + N - 1)
    assert float(_peak(bounded(features).detach()).max()) <= bound + 1e-6
    # training only the gain (the rest frozen) to concentrate the map on each image's top cell
    for p in learned.parameters():
        p.requires_grad_(p is learned.log_gain)
    target = bounded(features).detach().flatten(1).argmax(1)
    opt = torch.optim.Adam([learned.log_gain], lr=0.2)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(learned(features).flatten(1), target).backward()
        opt.step()
    assert float(learned.gain().detach()) > 5.0
    assert float(_peak(learned(features).detach()).min()) > 5 * bound


# ------------------------------------------------------------------ graphs of maps

G = ca.Graph([(8, 8), (4, 4), (2, 8), 3], [(0, 1), (0, 2), (0, 3, torch.arange(64) % 3)])


def test_learned_duals_on_a_graph_have_one_parameter_per_edge():
    duals = ca.LearnedDuals(G)
    assert [tuple(p.shape) for p in duals.parameters()] == [(1, 4, 4), (1, 2, 8), (1, 3)]


@pytest.mark.parametrize("method", ["softmax", "dual", "learned_dual"])
def test_consistent_attention_on_a_graph(method):
    module = ca.ConsistentAttention(G, method=method, temperature=[0.5, 1.0, 2.0, 0.7])
    scores = [torch.randn((3,) + s, requires_grad=True) for s in G.shapes]
    out = module.attend(scores)
    assert len(out.maps) == 4 and out.maps[3].shape == (3, 3)
    loss = sum(m.square().sum() for m in out.maps) + out.aux_loss
    loss.backward()
    assert all(s.grad is not None and torch.isfinite(s.grad).all() for s in scores)
    if method == "dual":
        assert float(out.solution.violation.detach().max()) < 1e-5
    if method == "learned_dual":
        assert all(p.grad is not None for p in module.learned_duals.parameters())
        assert float(module.consistency_loss(scores).detach()) > 0


def test_a_learnable_temperature_with_the_dual_method_on_a_graph():
    tau = torch.nn.Parameter(torch.tensor([0.5, 1.0, 2.0, 0.7], dtype=torch.float64))
    module = ca.ConsistentAttention(G, method="dual", temperature=tau)
    scores = [torch.randn((2,) + s, dtype=torch.float64) for s in G.shapes]
    sum((p * torch.randn_like(p)).sum() for p in module(scores).probs).backward()
    assert tau.grad is not None and torch.isfinite(tau.grad).all() and tau.grad.abs().sum() > 0


def test_exact_is_refused_at_construction_on_a_graph_it_cannot_solve():
    with pytest.raises(ValueError, match=r"method 'exact' solves forests only.*map 0 has 3 coarsenings"):
        ca.ConsistentAttention(G, method="exact")
    ca.ConsistentAttention(ca.Graph.star([(4, 4), (4, 4)], (2, 2)), method="exact")


@pytest.mark.parametrize("build", [
    lambda h: ca.ConsistentAttention(h, "exact", temperature=torch.nn.Parameter(torch.tensor([0.5, 1.0]))),
    lambda h: ca.ConsistentAttention(h, "exact", temperature=[torch.nn.Parameter(torch.tensor(0.5)), 1.0]),
    lambda h: ca.ConsistentAttention(h, "learned_dual", duals="amortised"),
    lambda h: ca.ConsistentAttention(h, "learned_dual"),
], ids=["parameter temperature", "list temperature", "amortised duals", "shared duals"])
def test_the_layer_replicates_as_data_parallel_does(build, monkeypatch):
    """torch's own replicate (what nn.DataParallel calls), its CUDA broadcast replaced by a
    copy: a Parameter temperature (a property without a setter) and AmortisedDuals
    (next(parameters()) of a replica, which lists none) failed (found by a review)."""
    import sys

    import torch.nn.parallel  # noqa: F401 - loads the module patched below

    replicate = sys.modules["torch.nn.parallel.replicate"]
    monkeypatch.setattr(replicate, "_broadcast_coalesced_reshape",
                        lambda tensors, devices, detach=False: [[t.detach() if detach else t * 1 for t in tensors]
                                                                for _ in devices])
    torch.manual_seed(0)
    h = ca.Hierarchy.grid([(4,), (2,)])
    layer = build(h)
    scores = [torch.randn(2, 4), torch.randn(2, 2)]
    replica = replicate.replicate(layer, [0, 1])[1]
    for got, want in zip(replica(scores).probs, layer(scores).probs):
        torch.testing.assert_close(got, want)
    with pytest.raises((AttributeError, TypeError)):  # only a replica's copy is set this way
        layer.temperature = torch.tensor([2.0, 2.0])


def test_fit_amortised_duals_names_its_own_argument():
    h = ca.Hierarchy.grid([(4,), (2,)])
    with pytest.raises(ValueError, match="train_scores"):
        ca.fit_amortised_duals(ca.AmortisedDuals(h), [torch.randn(2, 4)])


# ------------------------------------------------------------------ documented behaviour (mutation testing)

@pytest.mark.parametrize("build", [ca.LearnedDuals, ca.AmortisedDuals, ca.ConsistentAttention])
def test_modules_refuse_a_structure_that_is_not_a_hierarchy_or_graph(build):
    with pytest.raises(TypeError, match="h must be a convex_attention.Hierarchy or Graph"):
        build([(4,), (2,)])


@pytest.mark.parametrize("scale", ["bounded", "learned"])
def test_score_head_is_the_documented_composition(scale):
    """1×1 convolution, L2 normalisation over channels (per cell), ReLU, gain, 1×1 convolution,
    written out from the head's own weights."""
    torch.manual_seed(0)
    head = ca.ScoreHead(5, embed_channels=6, ndim=2, scale=scale).double()
    if scale == "learned":
        with torch.no_grad():
            head.log_gain.fill_(math.log(3.0))
    features = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    We, be = head.embed.weight.detach()[:, :, 0, 0], head.embed.bias.detach()
    ws, bs = head.score.weight.detach()[0, :, 0, 0], head.score.bias.detach()
    e = torch.einsum("oc,bchw->bohw", We, features) + be.view(1, -1, 1, 1)
    e = e / e.norm(dim=1, keepdim=True)
    gain = 3.0 if scale == "learned" else 1.0
    want = torch.einsum("o,bohw->bhw", ws, torch.relu(gain * e)) + bs
    got = head(features).detach()
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    # |θ − b| ≤ g‖w‖ whatever the size of the features
    big = head(1e3 * features).detach()
    assert float((big - bs).abs().max()) <= gain * float(ws.norm()) + 1e-9


def test_amortised_parameter_count_follows_the_documented_kernels_on_a_graph():
    """Kernel 3 on grid maps (K = 3^ndim taps), kernel 1 on irregular maps: per edge
    C + C·h·K + h + h·K + 1 for two layers, C = 2 channels on a graph."""
    module = ca.AmortisedDuals(G, hidden=16, layers=2)

    def per_edge(K, C=2, hidden=16):
        return C + C * hidden * K + hidden + hidden * K + 1

    # edges 0 → 1 and 0 → 2 join grids (2-D: K = 9); map 3 is irregular (K = 1)
    assert sum(p.numel() for p in module.parameters()) == 2 * per_edge(9) + per_edge(1)


@pytest.mark.parametrize("shapes, temps", [([(8,), (4,), (2,)], [0.5, 2.0, 1.0]),
                                           ([(4, 4), (2, 2), (1, 2)], [1.0, 0.3, 2.0])])
def test_amortised_features_are_centred_per_sample(shapes, temps):
    h = ca.Hierarchy.grid(shapes)
    g = torch.Generator().manual_seed(0)
    scores = [3 * torch.randn((3,) + s, generator=g, dtype=torch.float64) + 5 for s in h.shapes]
    for feat in ca.AmortisedDuals(h, temps).double().features(scores):
        torch.testing.assert_close(feat.flatten(2).mean(2), torch.zeros(feat.shape[:2], dtype=torch.float64),
                                   atol=1e-12, rtol=0)


def test_graph_features_without_sweeps_start_at_the_spanning_forest_optimum():
    """sweeps=0: the closed form of a spanning forest, zero on the other edges; the forest's
    duals are then block-optimal (no step) and only the other edges have a step to take."""
    h = ca.Graph.axial((4, 4))  # map 0 has two coarsenings: a forest keeps one of them
    g = torch.Generator().manual_seed(0)
    scores = [2 * torch.randn((3,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    feats = ca.AmortisedDuals(h, [0.7, 1.0, 1.6], sweeps=0).double().features(scores)
    lam = [float(f[:, 0].abs().max()) for f in feats]
    step = [float(f[:, 1].abs().max()) for f in feats]
    assert sorted(x < 1e-12 for x in lam) == [False, True]  # one edge in the forest, one outside
    for x, d in zip(lam, step):
        assert (x < 1e-12) == (d > 1e-3)  # in the forest: no step; outside it: a step to take


def test_amortised_duals_check_their_scores_and_give_the_scores_compute_dtype():
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    module = ca.AmortisedDuals(h)
    with pytest.raises(ValueError, match="scores"):
        module([torch.randn(2, 4, 4)])
    scores = [torch.randn((2,) + s) for s in h.shapes]
    wide = ca.AmortisedDuals(h).double()  # more precise than the scores: allowed, output in theirs
    assert all(d.dtype == torch.float32 for d in wide(scores))


def test_warm_cosine_schedule_is_a_tenth_of_linear_warm_up_then_cosine_decay():
    from convex_attention.nn import _warm_cosine

    n = 50
    factor = _warm_cosine(n)
    cosine = [0.5 * (1 + math.cos(math.pi * i / n)) for i in range(n)]
    ramp = [factor(i) / cosine[i] for i in range(n)]
    assert ramp[0] > 0  # the first step moves
    warm = n // 10
    assert all(0 < a < b <= 1 for a, b in zip(ramp[:warm - 1], ramp[1:warm]))  # linear warm-up, rising
    assert all(abs(r - 1) < 1e-12 for r in ramp[warm:])  # then the cosine itself
    assert all(abs(ramp[i + 1] - ramp[i] - (ramp[1] - ramp[0])) < 1e-12 for i in range(warm - 1))


def _parameter_trace(module, train, **kwargs):
    """Which part (linear, residual) moved before each evaluation of the training loss."""
    snapshots = []
    module.register_forward_pre_hook(lambda m, args: snapshots.append(
        ([p.detach().clone() for p in m.linear.parameters()], [p.detach().clone() for p in m.residual.parameters()])))
    history = ca.fit_amortised_duals(module, train, **kwargs)
    moved = []
    for (lin0, res0), (lin1, res1) in zip(snapshots[:-1], snapshots[1:]):
        moved.append((any(not torch.equal(a, b) for a, b in zip(lin0, lin1)),
                      any(not torch.equal(a, b) for a, b in zip(res0, res1))))
    return history, moved


def _small_fit():
    """An amortised module on two levels and its training scores (seeded)."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    g = torch.Generator().manual_seed(0)
    train = [torch.randn((8,) + s, generator=g) for s in h.shapes]
    torch.manual_seed(0)
    return ca.AmortisedDuals(h, [0.7, 1.6], hidden=4), train


def test_fit_trains_the_linear_path_for_two_thirds_of_the_steps_then_the_residual():
    module, train = _small_fit()
    history, moved = _parameter_trace(module, train, steps=6)
    assert len(history) == 6
    # evaluations: one per step, then the final one; every step moves its part alone
    assert moved[:6] == [(True, False)] * 4 + [(False, True)] * 2
    assert all(p.requires_grad for p in module.parameters())  # the flags are restored


def test_fit_with_a_zero_residual_rate_trains_the_linear_path_every_step():
    module, train = _small_fit()
    before = [p.detach().clone() for p in module.residual.parameters()]
    history, moved = _parameter_trace(module, train, steps=5, residual_lr=0.0)
    assert len(history) == 5 and moved[:5] == [(True, False)] * 5
    assert all(torch.equal(a, b) for a, b in zip(before, module.residual.parameters()))


def test_a_temperature_passed_per_pass_reaches_the_amortised_duals_and_the_loss():
    """On two levels the untrained amortised duals are optimal at the temperatures they are
    given; a pass at other temperatures than the module's must give them those."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    layer = ca.ConsistentAttention(h, "learned_dual", temperature=[0.5, 1.0], duals="amortised").double()
    g = torch.Generator().manual_seed(0)
    scores = [2 * torch.randn((3,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    for temps in ([0.5, 1.0], [2.0, 0.7]):
        exact = ca.solve(scores, h, "exact", temperature=temps)
        override = None if temps == [0.5, 1.0] else temps
        for got, want in zip(layer(scores, temperature=override).probs, exact.probs):
            torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
        assert float(layer.consistency_loss(scores, temperature=override).detach()) < 1e-12
        out = layer.attend(scores, temperature=override)
        assert float(out.aux_loss.detach()) < 1e-12
        for m, want in zip(out.maps, exact.probs):  # p(λ̂), as forward gives (ca_rev88: not the softmax maps)
            torch.testing.assert_close(m, want, atol=1e-10, rtol=0)


def test_the_module_consistency_loss_passes_detach_target_on():
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    layer = ca.ConsistentAttention(h, "learned_dual", temperature=[0.5, 1.0])
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    duals = [d.detach() for d in layer.learned_duals()]
    g = torch.Generator().manual_seed(0)
    base = [torch.randn((2,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    grads = {}
    for name, fn in (("module", lambda s, d: layer.consistency_loss(s, detach_target=d)),
                     ("function", lambda s, d: ca.consistency_loss(s, duals, h, [0.5, 1.0], detach_target=d))):
        for detach in (False, True):
            scores = [s.clone().requires_grad_() for s in base]
            fn(scores, detach).backward()
            grads[name, detach] = [torch.zeros_like(s) if s.grad is None else s.grad for s in scores]
    for detach in (False, True):
        for a, b in zip(grads["module", detach], grads["function", detach]):
            torch.testing.assert_close(a, b)
    assert any(not torch.allclose(a, b) for a, b in zip(grads["module", False], grads["module", True]))


@pytest.mark.parametrize("method", ["softmax", "learned_dual"])
def test_check_finite_rejects_non_finite_scores_in_forward_and_attend(method):
    bad = [torch.randn((2,) + s) for s in H.shapes]
    bad[1][0, 0, 0] = math.nan
    layer = ca.ConsistentAttention(H, method)
    for call in (layer, layer.attend):
        with pytest.raises(ValueError, match="NaN"):
            call(bad)
    quiet = ca.ConsistentAttention(H, method, check_finite=False)
    quiet(bad)
    quiet.attend(bad)


def test_attend_rejects_non_finite_duals_when_checking():
    layer = ca.ConsistentAttention(H, "learned_dual")
    with torch.no_grad():
        layer.learned_duals.duals[0][0, 0, 0] = math.inf
    scores = [torch.randn((2,) + s) for s in H.shapes]
    with pytest.raises(ValueError, match="NaN or Inf"):
        layer.attend(scores)
    ca.ConsistentAttention(H, "learned_dual", check_finite=False, duals=layer.learned_duals).attend(scores)


def test_a_frozen_parameter_in_a_temperature_list_is_registered():
    tau = torch.nn.Parameter(torch.tensor(0.5), requires_grad=False)
    module = ca.ConsistentAttention(H, method="exact", temperature=[tau, 1.0, 2.0])
    assert any(p is tau for p in module.parameters()) and "_temperature_parameters.0" in module.state_dict()


def test_amortised_residual_is_pointwise_on_an_irregular_hierarchy():
    """Kernel 1 (a pointwise MLP) on irregular maps, so K = 1 in the documented count
    C + C·h·K + h + h·K + 1 (two layers, C = 2 on two levels).  A parent map that is a grid's
    pooling (arange(6) // 2: 1-D blocks of 2) is a grid, as equality judges it: K = 3 (ca_rev115)."""
    h = ca.Hierarchy.from_parents([6, 3], [torch.tensor([0, 1, 1, 2, 0, 2])])
    module = ca.AmortisedDuals(h, hidden=4, layers=2)
    assert sum(p.numel() for p in module.parameters()) == 2 + 2 * 4 + 4 + 4 + 1
    blocks = ca.AmortisedDuals(ca.Hierarchy.from_parents([6, 3], [torch.arange(6) // 2]), hidden=4, layers=2)
    assert sum(p.numel() for p in blocks.parameters()) == 2 + 2 * 4 * 3 + 4 + 4 * 3 + 1


@pytest.mark.parametrize("structure", ["hierarchy", "graph"])
def test_an_untrained_amortised_residual_adds_nothing(structure):
    """Its last layer starts at zero: the residual net's output is zero for any features."""
    h = H if structure == "hierarchy" else G
    module = ca.AmortisedDuals(h)
    scores = [torch.randn((2,) + s) for s in h.shapes]
    for k, feat in enumerate(module.features(scores)):
        assert torch.equal(module.residual[k](feat), torch.zeros((2, 1) + feat.shape[2:]))


@pytest.mark.parametrize("structure", ["hierarchy", "graph"])
def test_amortised_features_of_half_scores_are_computed_in_float32(structure):
    """Half precision computes in float32: the features of half scores are those of the same
    values given in float32 (a block log-sum-exp in half precision is off by ~1e-3)."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2), (1, 1)]) if structure == "hierarchy" else G
    g = torch.Generator().manual_seed(0)
    half = [(20 * torch.randn((2,) + s, generator=g)).half() for s in h.shapes]
    module = ca.AmortisedDuals(h, [0.7] + [1.3] * (h.num_maps - 1))
    got, want = module.features(half), module.features([s.float() for s in half])
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-6)


def test_amortised_repr_names_sweeps_only_where_they_are_used():
    assert "sweeps=4" in repr(ca.AmortisedDuals(G, sweeps=4))
    assert "sweeps" not in repr(ca.AmortisedDuals(H, sweeps=4))


@pytest.mark.parametrize("kwargs", [{"lr": True}, {"residual_lr": True}, {"residual_lr": math.inf}])
def test_fit_refuses_a_bool_or_infinite_learning_rate(kwargs):
    h = ca.Hierarchy.grid([(4,), (2,)])
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        ca.fit_amortised_duals(ca.AmortisedDuals(h), [torch.randn(2, 4), torch.randn(2, 2)], 1, **kwargs)


def test_forward_checks_the_scores_before_the_amortised_duals_see_them():
    layer = ca.ConsistentAttention(ca.Hierarchy.grid([(4, 4), (2, 2)]), "learned_dual", duals="amortised")
    with pytest.raises(ValueError, match="scores"):
        layer([torch.randn(2, 4, 4)])


def test_consistency_loss_follows_the_module_check_finite():
    bad = [torch.randn((2,) + s) for s in H.shapes]
    bad[1][0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        ca.ConsistentAttention(H, "learned_dual").consistency_loss(bad)
    ca.ConsistentAttention(H, "learned_dual", check_finite=False).consistency_loss(bad)


@pytest.mark.parametrize("method", ["softmax", "learned_dual"])
def test_attend_computes_half_scores_in_float32(method):
    """Half precision computes in float32: the aux loss is float32, as for float32 scores of
    the same values; float64 scores give a float64 aux loss."""
    layer = ca.ConsistentAttention(H, method, temperature=[0.5, 1.0, 2.0])
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    g = torch.Generator().manual_seed(0)
    half = [(3 * torch.randn((2,) + s, generator=g)).half() for s in H.shapes]
    got, want = layer.attend(half).aux_loss, layer.attend([s.float() for s in half]).aux_loss
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert layer.attend([s.double() for s in half]).aux_loss.dtype == torch.float64


def test_score_head_keeps_a_batch_of_one():
    assert ca.ScoreHead(3, ndim=2)(torch.randn(1, 3, 1, 4)).shape == (1, 1, 4)


def test_reprs_name_method_temperature_and_scale():
    assert "method='dual'" in repr(ca.ConsistentAttention(H, "dual", temperature=[0.5, 1.0, 2.0]))
    assert "temperature=[0.5, 1.0, 2.0]" in repr(ca.ConsistentAttention(H, "dual", temperature=[0.5, 1.0, 2.0]))
    assert "scale='learned'" in repr(ca.ScoreHead(3, scale="learned"))


def test_a_final_loss_that_is_nan_keeps_the_parameters_of_the_lowest_training_loss():
    """The loss after the last step is read too; NaN there is not lower than anything, so the
    module goes back to the parameters of its lowest training loss (a comparison that took NaN
    for "not higher" kept the last step's)."""
    module, train = _small_fit()
    steps, calls, snapshots = 6, [], []
    module.register_forward_pre_hook(lambda m, args: snapshots.append(copy.deepcopy(m.state_dict())))

    def nan_at_the_final_evaluation(m, args, out):
        calls.append(1)
        return [o * math.nan for o in out] if len(calls) == steps + 1 else None

    module.register_forward_hook(nan_at_the_final_evaluation)
    history = ca.fit_amortised_duals(module, train, steps=steps)
    assert len(calls) == steps + 1 and all(math.isfinite(v) for v in history)
    best = snapshots[min(range(steps), key=history.__getitem__)]
    weights = [k for k, v in best.items() if isinstance(v, torch.Tensor)]  # (not the graph the state records)
    assert all(torch.equal(module.state_dict()[k], best[k]) for k in weights)
    assert not all(torch.equal(module.state_dict()[k], snapshots[steps][k]) for k in weights)


@pytest.mark.parametrize("structure", ["chain", "axial"])
def test_amortised_duals_keep_their_accuracy_under_autocast(structure):
    """A review: under the caller's autocast the network ran in bfloat16 and its duals silently
    got that accuracy (the chain's exact start: violation 2e-7 -> 6e-3), behind float32 outputs."""
    h = ca.Hierarchy.grid([(8, 8), (4, 4), (2, 2)]) if structure == "chain" else ca.Graph.axial((8, 8))
    g = torch.Generator().manual_seed(0)
    scores = [2 * torch.randn((4,) + s, generator=g) for s in h.shapes]
    module = ca.AmortisedDuals(h)
    layer = ca.ConsistentAttention(h, "learned_dual", duals=module)
    with torch.no_grad():
        plain, plain_probs = module(scores), layer(scores).probs
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed, mixed_probs = module(scores), layer(scores).probs
    assert all(d.dtype == torch.float32 for d in mixed)
    # float32 work either way: the same duals and maps up to float32 rounding
    assert max(float((a - b).abs().max()) for a, b in zip(plain, mixed)) < 1e-5
    assert max(float((a - b).abs().max()) for a, b in zip(plain_probs, mixed_probs)) < 1e-5


def test_fit_treats_its_training_scores_as_data():
    """A review: scores carrying a model's graph crashed the second step ("backward through the
    graph a second time") after writing gradients into that model; leaf scores accumulated .grad."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    g = torch.Generator().manual_seed(0)
    gain = torch.nn.Parameter(torch.ones(()))  # stands for the model that produced the scores
    train = [gain * torch.randn((8,) + s, generator=g) for s in h.shapes]
    torch.manual_seed(0)
    history = ca.fit_amortised_duals(ca.AmortisedDuals(h, hidden=4), train, steps=4)
    assert len(history) == 4 and all(math.isfinite(v) for v in history)
    assert gain.grad is None
    leaves = [t.detach().clone().requires_grad_() for t in train]
    ca.fit_amortised_duals(ca.AmortisedDuals(h, hidden=4), leaves, steps=2)
    assert all(t.grad is None for t in leaves)


def test_amortised_sizes_and_fit_arguments_take_numpy_scalars():
    """A review: np.int64(3) read "steps must be an integer >= 1, got np.int64(3)"."""
    np = pytest.importorskip("numpy")
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    module = ca.AmortisedDuals(h, np.float32(1.0), hidden=np.int64(4), layers=np.int64(2), sweeps=np.int64(3))
    g = torch.Generator().manual_seed(0)
    train = [torch.randn((8,) + s, generator=g) for s in h.shapes]
    history = ca.fit_amortised_duals(module, train, steps=np.int64(3), lr=np.float32(0.1),
                                      residual_lr=np.float32(1e-3))
    assert len(history) == 3


def test_consistent_attention_refuses_given_naming_solve():
    """A review: given= read "method 'dual' takes no option(s) ['given']", while ca.solve takes it."""
    h = ca.Graph.from_edges([4, 2, 2], [(0, 1, torch.tensor([0, 0, 1, 1])), (0, 2, torch.tensor([0, 1, 0, 1]))])
    with pytest.raises(TypeError, match=r"does not take given=.*ca\.solve\(scores, h, method, given=\.\.\.\)"):
        ca.ConsistentAttention(h, "dual", given={2: torch.tensor([[0.3, 0.7]])})


# ----------------------------------------------------------------------------- ca_rev56

def test_ca_rev56_amortised_duals_built_for_other_temperatures_are_refused_or_still_right():
    """``ConsistentAttention(h, "learned_dual", temperature=τ, duals=module)`` checks that the
    module was built for ``h`` (a module for another structure is refused) but not for ``τ``:
    it then feeds the module features at the layer's τ through a formula path whose weights
    T_k/T_j are those of the module's temperatures.  With fixed (float) temperatures on both
    sides nothing can reconcile them later.  Measured on a 3-level chain, τ = (0.3, 1, 3):
    an untrained module built at τ = 1 gives violation 1.11 (λ = 0 gives 1.98), the same module
    built at the layer's τ 6e-9.  Either refuse it, as for another h, or give the right duals."""
    h = ca.Hierarchy.grid([(8, 8), (4, 4), (2, 2)])
    g = torch.Generator().manual_seed(0)
    scores = [2 * torch.randn((4,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    temps = [0.3, 1.0, 3.0]
    right = ca.ConsistentAttention(h, "learned_dual", temperature=temps, duals=ca.AmortisedDuals(h, temps).double())
    with torch.no_grad():
        assert float(right(scores).violation.max()) < 1e-6
    try:
        layer = ca.ConsistentAttention(h, "learned_dual", temperature=temps, duals=ca.AmortisedDuals(h).double())
    except ValueError:
        return  # refused, as a module for another structure is
    with torch.no_grad():
        violation = float(layer(scores).violation.max())
    assert violation < 1e-6, violation


@pytest.mark.parametrize("module_temperature", [torch.tensor(0.1), torch.tensor([0.1, 0.1, 0.1])])
def test_rev60_amortised_duals_built_for_the_same_temperature_in_float32_are_accepted(module_temperature):
    """docs/design.md: ConsistentAttention "refuses one built for other fixed temperatures than
    its own".  The same temperature 0.1 given to the module as a float32 tensor (not requiring
    grad: fixed) and to AmortisedDuals as a float is compared as float(t) lists,
    [0.10000000149011612]*3 != [0.1]*3, and refused ("the AmortisedDuals were built for
    temperatures [0.1, 0.1, 0.1], the module's are [0.10000000149011612, ...]") although the
    weights its formula path is built from are float32 themselves (they differ by 1.5e-9
    relative, below float32's rounding).  The reverse (float module, float32 tensor duals) is
    refused too."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2), (1, 1)])
    duals = ca.AmortisedDuals(h, 0.1)
    try:
        ca.ConsistentAttention(h, "learned_dual", temperature=module_temperature, duals=duals)
    except ValueError as exc:
        raise AssertionError(f"the same temperature refused: {exc}") from exc


def test_a_dual_module_refuses_a_start_that_is_not_finite_at_construction():
    """ca_rev82's near-miss: since solve's pre-check reads init's form only, a NaN start passed
    ConsistentAttention's construction (refused at the first forward only)."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    with pytest.raises(ValueError, match="init"):
        ca.ConsistentAttention(h, "dual", init=[torch.full((1, 2), float("nan"), dtype=torch.float64)])


def test_rev88_module_consistency_loss_refuses_a_detach_target_that_is_not_a_bool():
    """The module's signature is consistency_loss(scores, detach_target=False, temperature=None),
    ca.consistency_loss's (scores, duals, h, temperature, detach_target): a temperature passed
    second, or detach_target="no" from a config, is taken as detach_target=True without a word
    (the coarse scores' gradient is None).  check_finite is held to True/False; this flag is not."""
    torch.manual_seed(0)
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    layer = ca.ConsistentAttention(h, "learned_dual").double()
    scores = [torch.randn((2,) + s, dtype=torch.float64, requires_grad=True) for s in h.shapes]
    for flag in (2.0, "no"):
        with pytest.raises((TypeError, ValueError), match="detach_target"):
            layer.consistency_loss(scores, flag)


def test_rev88_attend_with_amortised_duals_gives_consistent_maps_or_a_consistency_signal():
    """attend's docstring: aux_loss "is the consistency loss at the module's duals (shared or
    amortised), which trains the scores (and the duals) towards consistent maps".  On a
    hierarchy the amortised duals start at the optimum λ*(θ) for every θ, so the KL at them is
    0 whatever the scores: on 8²→4² N(0, 9) scores the maps' violation is up to 1.96 (of 2),
    aux_loss 6e-17 and its gradient to the scores 5e-17 (the shared duals: 3.4 and 0.59).  A
    model trained with it never gets consistent maps.  Fixed if the maps are p(λ) (consistent),
    or the loss trains the scores, or the combination is refused."""
    torch.manual_seed(0)
    h = ca.Hierarchy.grid([(8, 8), (4, 4)])
    scores = [(3 * torch.randn((4,) + s, dtype=torch.float64)).requires_grad_() for s in h.shapes]
    try:
        layer = ca.ConsistentAttention(h, "learned_dual", 1.0, duals="amortised").double()
        out = layer.attend(scores)
    except (TypeError, ValueError):
        return  # refused: fixed too
    violation = float(out.solution.violation.detach().max())
    signal = sum(float(g.norm()) for g in torch.autograd.grad(out.aux_loss, scores))
    assert violation < 1e-3 or signal > 1e-3, (violation, float(out.aux_loss), signal)


# ------------------------------------------------------------------ a learned state belongs to its graph
def _same_shapes_other_partition():
    """Two chains 4 → 2 whose one parameter per edge has one shape, (1, 2): cells paired (0, 1), (2, 3) and
    (0, 2), (1, 3)."""
    return (ca.Graph.from_edges([4, 2], [(0, 1, torch.tensor([0, 0, 1, 1]))]),
            ca.Graph.from_edges([4, 2], [(0, 1, torch.tensor([0, 1, 0, 1]))]))


def _saved_and_loaded(state):
    """``state`` through torch.save and torch.load(weights_only=True): what a user's file gives back."""
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_learned_duals_load_only_into_a_module_on_the_graph_they_were_learned_on():
    """A state of LearnedDuals (saved and read back with weights_only) loads into a module on the same graph (also
    built as a grid), and a module on another partition of the same shapes refuses it, strict or not; before, its
    λ loaded without a word and gave the maps duals learned for other constraints."""
    rows, cols = _same_shapes_other_partition()
    learned = ca.LearnedDuals(rows)
    with torch.no_grad():
        learned.duals[0].copy_(torch.tensor([[0.7, -0.7]]))
    state = _saved_and_loaded(learned.state_dict())
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    same = ca.LearnedDuals(ca.Graph([(4,), (2,)], [(0, 1)]))
    same.load_state_dict(state)
    assert torch.equal(same.duals[0], learned.duals[0])
    for strict in (True, False):
        other = ca.LearnedDuals(cols)
        with pytest.raises(ValueError, match=r"learned on another graph than this module's \(Graph of 2 maps"):
            other.load_state_dict(state, strict=strict)
        assert float(other.duals[0].detach().abs().sum()) == 0.0  # nothing of it was loaded
    wider = ca.LearnedDuals(ca.Graph.from_edges([6, 2], [(0, 1, torch.tensor([0, 0, 0, 1, 1, 1]))]))
    with pytest.raises(ValueError, match="learned on another graph"):
        wider.load_state_dict(state)


def test_a_duals_state_saved_without_its_graph_still_loads_unchecked():
    """A state without the graph (saved before it was recorded: a checkpoint of a run in progress) loads, strict
    too, as it did; a state missing a parameter is still refused."""
    rows, _ = _same_shapes_other_partition()
    learned = ca.LearnedDuals(rows)
    with torch.no_grad():
        learned.duals[0].copy_(torch.tensor([[0.3, -0.3]]))
    state = {k: v for k, v in learned.state_dict().items() if k != "graph_fingerprint"}
    loaded = ca.LearnedDuals(rows)
    loaded.load_state_dict(state)
    assert torch.equal(loaded.duals[0], learned.duals[0])
    with pytest.raises(RuntimeError, match="duals.0"):
        ca.LearnedDuals(rows).load_state_dict({})


def test_amortised_duals_and_a_module_holding_duals_carry_their_graph():
    """AmortisedDuals and a ConsistentAttention with learned duals: their states load back on the same graph
    and are refused on another partition of the same shapes; the fingerprint is one in any dtype and device."""
    rows, cols = _same_shapes_other_partition()
    amortised = _saved_and_loaded(ca.AmortisedDuals(rows, 1.0).state_dict())
    ca.AmortisedDuals(rows, 1.0).load_state_dict(amortised)
    with pytest.raises(ValueError, match="learned on another graph"):
        ca.AmortisedDuals(cols, 1.0).load_state_dict(amortised)
    layer = _saved_and_loaded(ca.ConsistentAttention(rows, "learned_dual").state_dict())
    ca.ConsistentAttention(rows, "learned_dual").double().load_state_dict(layer)
    with pytest.raises(ValueError, match="learned_duals'. the state to load was learned on another graph"):
        ca.ConsistentAttention(cols, "learned_dual").load_state_dict(layer)
    assert ca.LearnedDuals(rows).double().graph_fingerprint.dtype == torch.uint8


def test_rev98_amortised_duals_refuse_a_state_of_the_chain_graph_of_their_hierarchy():
    """Hierarchy.grid([(4, 4), (2, 2)]) and Graph([(4, 4), (2, 2)], [(0, 1)]) compare unequal (ConsistentAttention
    refuses duals built for one in a module on the other) and AmortisedDuals compute other features on them (the
    closed form's messages; the spanning forest's λ and a sweep step) with parameters of the same shapes; yet their
    fingerprints are one, so the chain graph's state loads into the hierarchy's module without a word: its largest
    violation went from 1.9e-7 to 1.49 (B = 8, N(0, 4) scores, τ = 1).  Such a state should be refused (or, if the
    two are made one structure, load without spoiling the module's duals)."""
    hier, chain = ca.Hierarchy.grid([(4, 4), (2, 2)]), ca.Graph([(4, 4), (2, 2)], [(0, 1)])
    torch.manual_seed(0)
    scores = [2 * torch.randn(8, 4, 4), 2 * torch.randn(8, 2, 2)]
    module = ca.AmortisedDuals(hier, 1.0)
    try:
        module.load_state_dict(ca.AmortisedDuals(chain, 1.0).state_dict())
    except ValueError:
        return
    with torch.no_grad():
        violation = float(ca.solve(scores, hier, "learned_dual", 1.0, duals=module(scores)).violation.max())
    assert violation < 1e-3, violation


def test_rev98_a_refused_state_leaves_a_layer_with_a_learned_temperature_as_it_was():
    """ConsistentAttention(rows, "learned_dual", temperature=Parameter(1.0)) loading the state of the same layer on
    another partition of the same shapes (temperature 3.0): the ValueError says "nothing of it was loaded into this
    module" (docs/design.md: refused "before anything of it is loaded"), but the layer's own parameter is loaded
    before its duals are checked: its temperature was 3.0 after the refusal.  It should still be 1.0."""
    rows, cols = _same_shapes_other_partition()
    layer = ca.ConsistentAttention(rows, "learned_dual", temperature=torch.nn.Parameter(torch.tensor(1.0)))
    other = ca.ConsistentAttention(cols, "learned_dual", temperature=torch.nn.Parameter(torch.tensor(3.0)))
    with pytest.raises(ValueError, match="learned on another graph"):
        layer.load_state_dict(other.state_dict())
    assert float(layer.temperature.detach()) == 1.0


def test_rev98_duals_built_on_the_meta_device_leave_their_grid_graph_as_it_was():
    """`with torch.device("meta"): ca.LearnedDuals(Graph([(4, 4), (2, 2)], [(0, 1)]))` built meta parameters before
    (PyTorch's way to build a large model without memory); now Graph.fingerprint builds the grid edge's parent map
    under the default device, a meta tensor, and fails (TypeError: can't convert meta device type tensor to numpy),
    and the graph keeps that meta tensor as its CPU parent map: g.parents(0) is a meta tensor from then on
    (AmortisedDuals alike).  The module should build, and the graph stay as it was."""
    g = ca.Graph([(4, 4), (2, 2)], [(0, 1)])
    try:
        with torch.device("meta"):
            duals = ca.LearnedDuals(g)
        assert duals.duals[0].is_meta
    finally:
        assert g.parents(0).device.type == "cpu"
    assert g.parents(0).tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]


def test_rev98_a_module_built_on_the_meta_device_loads_the_state_of_its_graph():
    """LearnedDuals on a parent-map graph built under torch.device("meta"), then loaded the ways PyTorch documents
    for it: load_state_dict(state, assign=True) raised NotImplementedError (Cannot copy out of meta tensor: the check
    reads the module's own meta buffer), and to_empty(device="cpu") then load_state_dict(state) raised ValueError
    "learned on another graph" (the buffer holds uninitialised bytes, e.g. [96, 0, 0, ...]).  Before the fingerprint
    both loaded.  The module's graph is known: both should load."""
    rows, _ = _same_shapes_other_partition()
    learned = ca.LearnedDuals(rows)
    with torch.no_grad():
        learned.duals[0].copy_(torch.tensor([[0.5, -0.5]]))
    with torch.device("meta"):
        assigned, emptied = ca.LearnedDuals(rows), ca.LearnedDuals(rows)
    assigned.load_state_dict(learned.state_dict(), assign=True)
    assert torch.equal(assigned.duals[0], learned.duals[0])
    emptied = emptied.to_empty(device="cpu")
    emptied.load_state_dict(learned.state_dict())
    assert torch.equal(emptied.duals[0], learned.duals[0])


def test_rev98_duals_on_a_grid_graph_build_no_parent_map():
    """A grid edge builds no parent map (test_graph: "a grid edge builds nothing"; Hierarchy: "large grids cost
    nothing to describe").  LearnedDuals(Graph([2**36, 1], [(0, 1)])) (one parameter) built in 0.06 s before; now
    Graph.fingerprint asks for the parent map: RuntimeError, "you tried to allocate 549755813888 bytes".  At 2**24
    cells it took 0.72 s instead of 0.06 s and the peak memory rose 226 -> 741 MB, the 128 MB map kept in the graph.
    The module should leave the grid edge without a parent map (here 2**20 cells)."""
    g = ca.Graph([2 ** 20, 1], [(0, 1)])
    ca.LearnedDuals(g)
    assert g._parents[0] is None


def test_rev98_a_module_pickled_before_the_fingerprint_loads_a_state_of_its_graph():
    """A ConsistentAttention saved whole (torch.save, weights_only=False) by the version before this one has duals
    without the buffer; given a state saved now on the same graph, load_state_dict raised AttributeError
    ("'LearnedDuals' object has no attribute 'graph_fingerprint'"; measured with a file written by commit 3e79175;
    here the buffer is taken out to stand for it).  The module's graph is known: the state should load (checked
    against it)."""
    rows, _ = _same_shapes_other_partition()
    old = ca.LearnedDuals(rows)
    del old._buffers["graph_fingerprint"]  # what an object pickled before the buffer existed holds
    old = copy.deepcopy(old)
    learned = ca.LearnedDuals(rows)
    with torch.no_grad():
        learned.duals[0].copy_(torch.tensor([[0.25, -0.25]]))
    old.load_state_dict(learned.state_dict())
    assert torch.equal(old.duals[0], learned.duals[0])


def test_rev98_a_module_cast_with_type_loads_its_own_state():
    """nn.Module.type(dst_type) casts parameters and buffers alike: LearnedDuals(rows).type(torch.float64) holds a
    float64 fingerprint, and loading its own state_dict back into itself (or into a fresh module on rows) raised
    ValueError "the state to load was learned on another graph": the check demands dtype uint8 (so does a state whose
    fingerprint holds the same 16 values as int64, e.g. read back from lists).  The graph is the same: it should
    load."""
    rows, _ = _same_shapes_other_partition()
    cast = ca.LearnedDuals(rows).type(torch.float64)
    cast.load_state_dict(cast.state_dict())
    ca.LearnedDuals(rows).load_state_dict(cast.state_dict())


def test_a_state_whose_fingerprint_is_no_fingerprint_is_refused_saying_so():
    """A graph_fingerprint that is not 16 byte values (three values; a value of 300) is refused as no fingerprint,
    not as another graph; the same 16 values in another dtype (a cast module's state) load."""
    rows, _ = _same_shapes_other_partition()
    state = ca.LearnedDuals(rows).state_dict()
    for wrong in (torch.tensor([1, 2, 3], dtype=torch.uint8), torch.full((16,), 300.0), torch.ones(16, dtype=bool)):
        with pytest.raises(ValueError, match="is not a graph's fingerprint"):
            ca.LearnedDuals(rows).load_state_dict(dict(state, graph_fingerprint=wrong))
    ca.LearnedDuals(rows).load_state_dict(dict(state, graph_fingerprint=state["graph_fingerprint"].long()))


def test_rev99_duals_built_on_the_meta_device_save_a_state_their_graph_loads():
    """PyTorch's deferred initialisation: LearnedDuals(rows) built under torch.device("meta"), then
    to_empty(device="cpu") and its parameters set (here λ = [[0.5, -0.5]]).  The graph_fingerprint buffer is left as
    to_empty leaves it, uninitialised (measured [171, 2, 0, 0, ...]; AmortisedDuals and a ConsistentAttention
    alike), and state_dict() saves those bytes: loading the state into LearnedDuals(rows), or back into the module
    itself, raises ValueError "learned on another graph than this module's".  The check reads the module's graph,
    not the buffer, on load (efcbe72); the state saved should carry the graph's fingerprint and load."""
    rows, _ = _same_shapes_other_partition()
    with torch.device("meta"):
        deferred = ca.LearnedDuals(rows)
    deferred = deferred.to_empty(device="cpu")
    with torch.no_grad():
        deferred.duals[0].copy_(torch.tensor([[0.5, -0.5]]))
    state = deferred.state_dict()
    fresh = ca.LearnedDuals(rows)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.duals[0], deferred.duals[0])
    deferred.load_state_dict(state)


# ---- ca_rev126 (strict xfail: review of eb4ed2c)

def test_ca_rev126_amortised_duals_give_finite_maps_where_a_whole_block_is_masked():
    """Run: a 4×4 → 2×2 hierarchy, float64 scores N(0, 2²) batch 2; sample 0's two right-hand columns set to
    −∞ (a padding mask: the 2×2 blocks of coarse cells (0, 1) and (1, 1) wholly masked; every map keeps
    finite cells); ConsistentAttention(h, "learned_dual", duals="amortised", check_finite=False).double()
    .attend(scores).  Expected: finite maps with 0 on the masked cells (docs/design.md §4, check_finite:
    "softmax and learned_dual are softmaxes, which give a masked cell 0 where its map has a finite cell");
    untrained on a hierarchy the module starts at the optimum, so exact's maps (which solve this sample:
    [[0.632, 0], [0.368, 0]] on the coarse map).  Observed: every cell of sample 0's maps NaN, aux_loss NaN
    (AmortisedDuals._block_lse takes −∞ − (−∞) on a masked block, and centring spreads the −∞ message);
    sample 1 is right.  A single masked cell in a block is fine."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    g = torch.Generator().manual_seed(0)
    scores = [2 * torch.randn((2,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    scores[0][0, :, 2:] = -math.inf
    want = ca.solve(scores, h, "exact", check_finite=False).probs
    assert all(bool(torch.isfinite(p).all()) for p in want)  # holds today
    module = ca.ConsistentAttention(h, "learned_dual", duals="amortised", check_finite=False).double()
    with torch.no_grad():
        got = module.attend(scores)
    assert all(bool(torch.isfinite(p).all()) for p in got.maps), [p[0] for p in got.maps]
    assert bool(torch.isfinite(got.aux_loss))
    for p, q in zip(got.maps, want):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_amortised_duals_on_a_graph_with_a_wholly_masked_row_give_finite_consistent_maps():
    """Axial 4×4 (rows and columns), sample 0's first row masked (−∞), check_finite=False: the untrained
    amortised duals (the sweeps' start) were NaN there (ca_rev126); now every map is finite, the masked row's
    cells and its row cell get 0, the auxiliary loss is finite, and the violation is about the unmasked
    sample's (both < 1e-3)."""
    cells = torch.arange(16)
    h = ca.Graph.from_edges([16, 4, 4], [(0, 1, cells // 4), (0, 2, cells % 4)])
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn(2, n, generator=g, dtype=torch.float64) for n in (16, 4, 4)]
    scores[0][0, :4] = -math.inf
    module = ca.ConsistentAttention(h, "learned_dual", duals="amortised", check_finite=False).double()
    with torch.no_grad():
        got = module.attend(scores)
    assert all(bool(torch.isfinite(p).all()) for p in got.maps) and bool(torch.isfinite(got.aux_loss))
    assert float(got.maps[0][0, :4].abs().max()) == 0.0 and float(got.maps[1][0, 0]) == 0.0
    assert float(ca.metrics.violation(got.maps, h).max()) < 1e-3


# ---- ca_rev128 (strict xfail: review of 5bbdc7a)


def test_ca_rev128_amortised_duals_on_a_graph_read_no_learned_temperature_as_a_float(monkeypatch):
    import traceback

    h = ca.Graph.from_edges([12, 4, 3], [(0, 1, torch.arange(12) // 3), (0, 2, torch.arange(12) % 3)])
    module = ca.nn.AmortisedDuals(h).double()
    generator = torch.Generator().manual_seed(0)
    scores = [torch.randn((2,) + s, generator=generator, dtype=torch.float64) for s in h.shapes]
    tau = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    reads = []
    original = torch.Tensor.__float__

    def read(self):
        if self.requires_grad and any(f.filename.endswith("nn.py") and "convex_attention" in f.filename
                                      for f in traceback.extract_stack()[:-1]):
            reads.append(traceback.extract_stack()[-2].lineno)
        return original(self)

    monkeypatch.setattr(torch.Tensor, "__float__", read)
    sum(d.pow(2).sum() for d in module.predict(scores, [tau, tau, tau])).backward()
    assert reads == []


# ---- ca_rev131 (strict xfail: review of a83c028)


def test_ca_rev131_a_learned_dual_layer_on_a_graph_reads_its_learned_temperature_at_most_twice(monkeypatch):
    h = ca.Graph.axial((4, 4))
    layer = ca.ConsistentAttention(h, "learned_dual", temperature=torch.nn.Parameter(torch.ones(h.num_maps)),
                                   check_finite=False, duals="amortised")
    generator = torch.Generator().manual_seed(0)
    scores = [torch.randn(2, *shape, generator=generator) for shape in h.shapes]
    import traceback

    reads = []

    def record(name):
        # (not the flag with_implied_masks reads per pass on a graph that is not a forest: no temperature, and
        # documented beside it in design.md and the user guide)
        if not any(f.name == "with_implied_masks" for f in traceback.extract_stack()):
            reads.append(name)

    for name in ("tolist", "__float__", "item", "__bool__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _real=real, _name=name, **k: (
            record(_name), _real(self, *a, **k))[1])
    layer(scores)
    monkeypatch.undo()
    assert len(reads) <= 2, reads


# ---- ca_rev133 (strict xfail: review of f492f23)


@pytest.mark.parametrize("check_finite", [True, False])
def test_ca_rev133_a_learned_dual_layer_refuses_vmap_as_solve_does(check_finite):
    """forward for learned_dual now calls the method directly instead of ca.solve (ca_rev131), and skips
    solve's check_transforms (docs/design.md, torch.func: under vmap, jacfwd and hessian solve 'raise
    NotImplementedError saying so, since their input checks read values').  Expected: that error, as before."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2), (1, 1)])
    layer = ca.ConsistentAttention(h, "learned_dual", check_finite=check_finite)
    generator = torch.Generator().manual_seed(0)
    scores = [torch.randn(3, 2, *shape, generator=generator) for shape in h.shapes]
    with pytest.raises(NotImplementedError, match="vmap"):
        torch.func.vmap(lambda *s: layer(list(s)).probs[0])(*scores)


# ---- ca_rev146 (strict xfail: review of 0ef415e)

@pytest.mark.parametrize("mask", ["fine block", "coarse cell"])
def test_ca_rev146_amortised_duals_give_a_learned_temperature_a_finite_gradient_where_cells_are_masked(mask):
    """Run: 4×4 → 2×2 hierarchy, float64 scores 2·N(0, 1) batch 2, sample 0 with its top-left 2×2 block
    (or coarse cell (0, 0)) at −∞; ConsistentAttention(h, "learned_dual", temperature=Parameter([0.7, 1.3]),
    duals="amortised", check_finite=False).double(); loss = attend(scores).aux_loss + Σ w ⊙ maps[1].  Maps and
    loss are finite (docs/design.md §4 check_finite: learned_dual masks what pooling rules out); the loss is
    smooth in τ (central differences: [-0.370, -0.340] for the block, [-0.224, -0.158] for the coarse cell).
    Observed: τ.grad [nan, nan] in both cases.  nn.py AmortisedDuals.features: u = a · (τ_{k+1} / T_{k+1}) with
    a = −∞ on the masked coarse cells (and v = θ_{k+1} · (T_k / T_{k+1}) with θ = −∞): _centre_live gives those
    cells 0 and no gradient, but the product's backward forms Σ 0 · (−∞) = NaN for the ratio.  With one masked
    fine cell (no whole block) the gradient matches the differences to 1e-9."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    generator = torch.Generator().manual_seed(0)
    scores = [2 * torch.randn((2,) + s, generator=generator, dtype=torch.float64) for s in h.shapes]
    if mask == "fine block":
        scores[0][0, :2, :2] = -math.inf
    else:
        scores[1][0, 0, 0] = -math.inf
    tau = torch.nn.Parameter(torch.tensor([0.7, 1.3], dtype=torch.float64))
    layer = ca.ConsistentAttention(h, "learned_dual", temperature=tau, duals="amortised", check_finite=False).double()
    weights = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)

    def loss(temperature):
        got = layer.attend(scores, temperature=temperature)
        return got.aux_loss + (got.maps[1] * weights).sum()

    value = loss(tau)
    assert bool(torch.isfinite(value))  # holds today
    (grad,) = torch.autograd.grad(value, tau)
    step = 1e-6
    with torch.no_grad():
        central = torch.stack([(loss(tau.detach() + step * e) - loss(tau.detach() - step * e)) / (2 * step)
                               for e in torch.eye(2, dtype=torch.float64)])
    assert bool(torch.isfinite(grad).all()), grad
    torch.testing.assert_close(grad, central, rtol=1e-5, atol=1e-7)


def test_ca_rev146_a_fit_that_diverges_in_the_residual_phase_names_residual_lr():
    """Run: 4 → 2 hierarchy, 8 N(0, 1) training instances, fit_amortised_duals(steps=30, lr=1e-3,
    residual_lr=1e20): the linear path takes steps 1-20 (loss ~1e-8), the residual net steps 21-30, and the
    loss is NaN at step 23.  Observed: FloatingPointError "... lower lr (0.001) or check the training scores"
    (nn.py fit_amortised_duals names lr whatever the phase): the advice is the wrong argument; lowering lr
    changes nothing there.  Expected: the message names residual_lr (1e+20), the rate of the phase that
    diverged."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    generator = torch.Generator().manual_seed(0)
    train = [torch.randn(8, 4, generator=generator), torch.randn(8, 2, generator=generator)]
    module = ca.AmortisedDuals(h)
    with pytest.raises(FloatingPointError, match="step 2[1-9]") as raised:
        ca.fit_amortised_duals(module, train, steps=30, lr=1e-3, residual_lr=1e20)
    assert "residual_lr" in str(raised.value), str(raised.value)


@pytest.mark.parametrize("structure", ["hierarchy", "graph"])
def test_ca_rev146_a_layer_with_amortised_duals_traces_meta_scores_as_with_shared_duals(structure):
    """docs/design.md §4: with check_finite=False meta scores are traced through the methods that are torch
    operations (learned_dual among them), and a layer with shared duals does so.  Run: the same layer with
    duals="amortised", moved to the meta device, attend(meta scores).  Observed: RuntimeError "unsupported
    scalarType" from torch.autocast(device_type="meta", enabled=False), the guard in AmortisedDuals.predict
    (nn.py) that keeps a caller's autocast off its convolutions (meta has no autocast); with that guard skipped
    where autocast is not available the whole pass traces, maps (2, 4, 4) and a 0-d loss."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)]) if structure == "hierarchy" else ca.Graph.axial((4, 4))
    scores = [torch.empty((2,) + s, device="meta") for s in h.shapes]
    shared = ca.ConsistentAttention(h, "learned_dual", check_finite=False).to("meta").attend(scores)
    assert [tuple(p.shape) for p in shared.maps] == [(2,) + s for s in h.shapes]  # holds today
    layer = ca.ConsistentAttention(h, "learned_dual", duals="amortised", check_finite=False).to("meta")
    got = layer.attend(scores)
    assert [tuple(p.shape) for p in got.maps] == [(2,) + s for s in h.shapes]
    assert got.aux_loss.shape == () and got.aux_loss.is_meta


# ---- ca_rev164 (review of 6e5ff4b)

def test_a_meta_temperature_beside_scores_with_values_is_refused_and_inference_mode_fits_nothing():
    """A meta temperature stands in for its values only where every score is meta too (the solvers read a
    placeholder, which real scores would use silently); fit_amortised_duals under inference_mode says why."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    tau = torch.nn.Parameter(torch.tensor(1.0, device="meta"))
    scores = [torch.randn((2,) + s) for s in h.shapes]
    for method in ("softmax", "exact"):
        with pytest.raises(ValueError, match="meta device.*scores on cpu"):
            ca.solve(scores, h, method, temperature=tau)
    with pytest.raises(ValueError, match="meta device"):
        ca.ConsistentAttention(h, "learned_dual", temperature=tau)(scores)
    module = ca.AmortisedDuals(h, [0.5, 2.0])
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        ca.fit_amortised_duals(module, [3 * torch.randn((8,) + s) for s in h.shapes], steps=2)


# ---- ca_rev164 (review of 6e5ff4b; its strict xfails now pass)

def test_ca_rev164_a_layer_refuses_or_survives_an_amortised_state_built_for_other_temperatures():
    """ConsistentAttention refuses AmortisedDuals built for other fixed temperatures (a ValueError: its formula
    path is weighted for its own), and a state learned on another graph is refused on load; the temperatures a
    state's formula weights were built for are not in it.  Run: a layer at τ = (2, 0.5, 1), duals="amortised",
    load_state_dict of the same layer built at τ = (0.5, 2, 1) (8×8 → 4×4 → 2×2 grid, N(0, 9) scores).
    Expected: a ValueError on load, or the loaded layer's maps as consistent as its own (violation ≤ 1e-3).
    Observed: loaded with no error (strict); mean violation 1.23 where its own state gives 5.0e-7 and λ = 0 1.89."""
    h = ca.Hierarchy.grid([(8, 8), (4, 4), (2, 2)])
    generator = torch.Generator().manual_seed(0)
    scores = [3 * torch.randn((8,) + s, generator=generator) for s in h.shapes]
    layer = ca.ConsistentAttention(h, "learned_dual", temperature=[2.0, 0.5, 1.0], duals="amortised")
    assert float(layer(scores).violation.mean().detach()) < 1e-5  # its own state: consistent
    other = ca.ConsistentAttention(h, "learned_dual", temperature=[0.5, 2.0, 1.0], duals="amortised")
    try:
        layer.load_state_dict(other.state_dict())
    except ValueError:
        return
    assert float(layer(scores).violation.mean().detach()) <= 1e-3


def test_ca_rev164_a_layer_with_a_learned_temperature_builds_under_the_meta_device():
    """PyTorch's deferred initialisation (the model built under torch.device("meta"), then to_empty) works for
    the layer with float temperatures and for its duals (ca_rev98/99).  Run: the same with a learned temperature,
    ConsistentAttention(h, "exact", temperature=nn.Parameter(torch.tensor(1.0))) under torch.device("meta").
    Expected: a layer (its Parameter on meta), or a ValueError naming the meta device (as for meta scores).
    Observed: NotImplementedError "Cannot copy out of meta tensor; no data!" from check_temperatures' read of
    the values (torch's own message, which ca_rev126 replaced for scores)."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    with torch.device("meta"):
        assert ca.ConsistentAttention(h, "exact", temperature=[1.0, 2.0]).temperature == [1.0, 2.0]  # holds today
        try:
            layer = ca.ConsistentAttention(h, "exact", temperature=torch.nn.Parameter(torch.tensor(1.0)))
        except ValueError as err:
            assert "meta" in str(err), str(err)
            return
    assert layer.temperature.is_meta


@pytest.mark.parametrize("method", ["softmax", "exact", "learned_dual"])
def test_ca_rev164_a_layer_with_a_learned_temperature_traces_meta_scores(method):
    """docs/design.md §4: with check_finite=False meta scores are traced through softmax, exact and learned_dual,
    and a layer with float temperatures moved to the meta device does so.  Run: the layer with a learned
    temperature (nn.Parameter(tensor(1.0))), .to("meta"), attend(meta scores).  Expected: maps of shapes
    (2, 4, 4), (2, 2, 2).  Observed: NotImplementedError "Cannot copy out of meta tensor; no data!" (the
    per-pass temperature check reads the Parameter's values)."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    scores = [torch.empty((2,) + s, device="meta") for s in h.shapes]
    fixed = ca.ConsistentAttention(h, method, check_finite=False).to("meta")
    assert [tuple(p.shape) for p in fixed.attend(scores).maps] == [(2, 4, 4), (2, 2, 2)]  # holds today
    layer = ca.ConsistentAttention(h, method, temperature=torch.nn.Parameter(torch.tensor(1.0)),
                                   check_finite=False).to("meta")
    assert [tuple(p.shape) for p in layer.attend(scores).maps] == [(2, 4, 4), (2, 2, 2)]


def test_ca_rev164_fit_amortised_duals_trains_or_says_why_under_no_grad():
    """fit_amortised_duals trains the module in place (its own optimiser and backward); ConsistentAttention judges
    its temperature whatever the grad mode.  Run: fit_amortised_duals(AmortisedDuals(4×4 → 2×2, τ = (0.5, 2)),
    8 instances, steps=3) inside torch.no_grad() (e.g. an evaluation hook).  Expected: the fit (3 losses), or
    an error naming the grad mode.  Observed: RuntimeError "element 0 of tensors does not require grad and does
    not have a grad_fn" from loss.backward() (the message a review had found for a phase with nothing to train)."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    generator = torch.Generator().manual_seed(0)
    train = [3 * torch.randn((8,) + s, generator=generator) for s in h.shapes]
    module = ca.AmortisedDuals(h, [0.5, 2.0])
    with torch.no_grad():
        try:
            history = ca.fit_amortised_duals(module, train, steps=3)
        except RuntimeError as err:
            assert "no_grad" in str(err) or "grad mode" in str(err), str(err)
            return
    assert len(history) == 3 and all(math.isfinite(x) for x in history)


# ---- ca_rev176 (review of 1353f98; its strict xfails now pass)

def test_ca_rev176_an_amortised_state_loads_only_into_a_module_with_its_sweeps():
    """AmortisedDuals on a graph that is not a hierarchy computes its features with ``sweeps`` solver sweeps, and
    its linear path is trained on those features; the state records the graph and the temperatures the weights
    were made for (ca_rev98, ca_rev164), not ``sweeps``.  Run: axial 6×6, AmortisedDuals(h, sweeps=3) fitted 30
    steps on 16 N(0, 9) instances, its state loaded (strict) into AmortisedDuals(h, sweeps=0).  Expected: a
    ValueError on load, or the saved module's duals.  Observed: loaded with no error; held-out mean violation
    0.517 where the saved module gives 0.0070 (duals 1.8 apart); nn.py _records lists no sweeps."""
    h = ca.Graph.axial((6, 6))
    generator = torch.Generator().manual_seed(0)
    train = [3 * torch.randn((16,) + s, generator=generator) for s in h.shapes]
    test = [3 * torch.randn((16,) + s, generator=generator) for s in h.shapes]
    torch.manual_seed(0)
    saved = ca.AmortisedDuals(h, sweeps=3)
    ca.fit_amortised_duals(saved, train, steps=30)
    loaded = ca.AmortisedDuals(h, sweeps=0)
    try:
        loaded.load_state_dict(saved.state_dict())
    except ValueError as err:
        assert "sweeps" in str(err), str(err)
        return
    with torch.no_grad():
        for got, want in zip(loaded(test), saved(test)):
            torch.testing.assert_close(got, want)


def test_ca_rev176_a_layer_with_a_learned_temperature_and_amortised_duals_builds_under_the_meta_device():
    """docs/design.md §4: a learned temperature on the meta device (a model built under torch.device("meta"))
    holds no value to check: the layer is built (ca_rev164); so it is with shared duals.  Run: the same with
    duals="amortised".  Expected: a layer (then to_empty and a state load, as with shared duals), or a ValueError
    naming the meta device.  Observed: RuntimeError "Tensor.item() cannot be called on meta tensors" from
    ConsistentAttention._make_duals (nn.py: float(t.detach()) of the Parameter, for AmortisedDuals' start)."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    with torch.device("meta"):
        shared = ca.ConsistentAttention(h, "learned_dual", temperature=torch.nn.Parameter(torch.tensor(1.0)))
        assert shared.temperature.is_meta  # holds today
        try:
            layer = ca.ConsistentAttention(h, "learned_dual", temperature=torch.nn.Parameter(torch.tensor(1.0)),
                                           duals="amortised")
        except ValueError as err:
            assert "meta" in str(err), str(err)
            return
    assert layer.temperature.is_meta


def test_ca_rev176_the_layer_calls_its_amortised_duals_as_a_module():
    """A model's forward hooks (and pre-hooks, wrappers that act in nn.Module.__call__) on a submodule fire when its
    parent uses it.  With shared duals, layer(scores) calls layer.learned_duals(), and a forward hook registered on
    it fires once per pass.  Run: the same with duals="amortised".  Observed: the hook never fires, neither in
    forward nor in attend (nn.py ConsistentAttention._duals calls self.learned_duals.predict directly)."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    generator = torch.Generator().manual_seed(0)
    scores = [torch.randn((2,) + s, generator=generator) for s in h.shapes]
    for kind in ("shared", "amortised"):
        layer = ca.ConsistentAttention(h, "learned_dual", duals=kind)
        calls = []
        layer.learned_duals.register_forward_hook(lambda module, args, out, seen=calls: seen.append(len(out)))
        layer(scores)
        layer.attend(scores)
        assert calls == [1, 1], (kind, calls)


def test_ca_rev176_the_layer_repr_is_one_line_with_a_parameter_in_its_temperature_list():
    """extra_repr prints "tensor" for a Parameter temperature (one line), and the list itself for a list.  Run:
    temperature=[nn.Parameter(tensor(1.)), 2.0].  Observed: "..., temperature=[Parameter containing:\\ntensor(1.,
    requires_grad=True), 2.0]": the header line of the module's repr is broken over two lines."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    assert "\n" not in ca.ConsistentAttention(h, "exact", temperature=torch.nn.Parameter(torch.ones(()))).extra_repr()
    layer = ca.ConsistentAttention(h, "exact", temperature=[torch.nn.Parameter(torch.tensor(1.0)), 2.0])
    text = layer.extra_repr()
    assert "\n" not in text and "Parameter containing" not in text, text


def test_ca_rev176_amortised_duals_on_the_meta_device_refuse_scores_that_hold_values():
    """Duals or a temperature on the meta device beside scores with values are refused (LearnedDuals moved to
    meta: ValueError "duals[0] is on meta, scores on cpu"; a meta temperature: ca_rev164).  Run: AmortisedDuals
    (4×4 → 2×2) moved to meta (as a model is, to trace shapes), called on CPU scores, alone and in a learned_dual
    layer.  Observed: CPU duals of uninitialised memory (e.g. ±1.7e22, other values on another run: torch's
    convolution of CPU features with a meta weight), no error; the layer's maps are 1.51 from consistent where
    the same module on the CPU gives 1.2e-7 (nn.py AmortisedDuals.predict never compares its parameters' device
    with the scores')."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    generator = torch.Generator().manual_seed(0)
    scores = [2 * torch.randn((2,) + s, generator=generator) for s in h.shapes]
    with pytest.raises(ValueError, match="meta"):
        ca.ConsistentAttention(h, "learned_dual", duals=ca.LearnedDuals(h).to("meta"))(scores)  # holds today
    module = ca.AmortisedDuals(h).to("meta")
    with pytest.raises((ValueError, TypeError, RuntimeError), match="meta"):
        module(scores)
    with pytest.raises((ValueError, TypeError, RuntimeError), match="meta"):
        ca.ConsistentAttention(h, "learned_dual", duals=module).attend(scores)


# ---- ca_rev183 (review of c2c898e; its strict xfails now pass)


def test_ca_rev183_the_advice_of_the_meta_temperature_refusal_builds_the_layer():
    """Run: ``ConsistentAttention(h, "learned_dual", temperature=t, duals="amortised")`` with ``t`` a
    fixed (no grad) tensor on the meta device, which the layer takes with ``duals="shared"``.
    Refused (4832503): "... build the layer off the meta device, or pass duals=ca.AmortisedDuals(h,
    temperature) built with the values".  Following that advice, ``duals=ca.AmortisedDuals(h,
    1.0)``: expected the layer built (as with a learned meta temperature) or a refusal in words;
    observed torch's "Tensor.item() cannot be called on meta tensors" (nn.py ``_make_duals``: the
    temperature comparison ``float(a)`` runs on the meta tensor, as both are ``_fixed``)."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    t = torch.tensor([1.0, 1.0], device="meta")
    ca.ConsistentAttention(h, "learned_dual", temperature=t)  # a fixed meta temperature: taken
    with pytest.raises(ValueError, match="AmortisedDuals"):
        ca.ConsistentAttention(h, "learned_dual", temperature=t, duals="amortised")
    try:
        ca.ConsistentAttention(h, "learned_dual", temperature=t, duals=ca.AmortisedDuals(h, 1.0))
    except ValueError as err:  # a refusal in words is a fix too
        assert "meta" in str(err)


# ---- ca_rev198 (mutation review of 755d5f1)


def test_ca_rev198_amortised_duals_built_a_tenth_of_a_percent_off_the_layer_s_temperature_are_refused():
    """Kills nn.py's ``TEMPERATURE_MATCH = 1e-6`` loosened to 1e-2 (the tests compared temperatures
    2x apart, or float32's rounding of one value): 1.001 is not the layer's 1.0, in the layer and on
    load; float32's 0.1 still is 0.1."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    with pytest.raises(ValueError, match="built for temperatures"):
        ca.ConsistentAttention(h, "learned_dual", temperature=1.0, duals=ca.AmortisedDuals(h, 1.001))
    with pytest.raises(ValueError, match="built for temperatures"):
        ca.AmortisedDuals(h, 1.0).load_state_dict(ca.AmortisedDuals(h, 1.001).state_dict())
    ca.ConsistentAttention(h, "learned_dual", temperature=0.1,
                           duals=ca.AmortisedDuals(h, float(torch.tensor(0.1, dtype=torch.float32))))


# ---- ca_rev200 (mutation review of 8fd2654)
@pytest.mark.parametrize("method", ["exact", "dual", "softmax"])
def test_ca_rev200_a_per_pass_temperature_reaches_a_method_without_duals(method):
    """Kills the mutant that drops ``temperature`` in ``forward`` for methods without duals (``temperature =
    self.temperature``): the pass ran at the module's temperatures, silently; ``attend`` goes through forward too."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    layer = ca.ConsistentAttention(h, method, temperature=[0.5, 1.0])
    g = torch.Generator().manual_seed(0)
    scores = [2 * torch.randn((2,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    want = ca.solve(scores, h, method, temperature=[2.0, 0.7]).probs
    assert (want[0] - ca.solve(scores, h, method, temperature=[0.5, 1.0]).probs[0]).abs().max() > 1e-2
    for got in (layer(scores, temperature=[2.0, 0.7]).probs, layer.attend(scores, temperature=[2.0, 0.7]).maps):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_ca_rev200_a_state_saved_on_the_meta_device_carries_its_graph_and_is_refused_elsewhere():
    """Kills the mutant that saves a meta module's records on the meta device (``make(held.device)`` for
    ``make(cpu if held.is_meta ...)``): the state's graph_fingerprint held no values, so a module on another graph
    of the same shapes took it unchecked.  Saved, it is the graph's 16 bytes on the CPU, refused by the other."""
    rows, cols = _same_shapes_other_partition()
    with torch.device("meta"):
        deferred = ca.LearnedDuals(rows)
    state = deferred.state_dict()
    assert state["graph_fingerprint"].device.type == "cpu"
    assert bytes(state["graph_fingerprint"].tolist()) == rows.fingerprint()
    with pytest.raises(ValueError, match="another graph"):
        ca.LearnedDuals(cols).load_state_dict(state)


def test_ca_rev200_a_meta_graph_fingerprint_in_a_state_is_not_read():
    """Kills the mutant that drops ``check_graph_state``'s early return for a meta tensor: a state of meta tensors
    (a deferred-initialisation model's, ``assign=True``) holds no bytes to read, and reading them raised torch's
    meta-tensor error where the load is documented to go on unchecked."""
    from convex_attention.nn import check_graph_state

    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    with torch.device("meta"):
        target = ca.LearnedDuals(h)
        state = {k: torch.empty_like(v, device="meta") for k, v in ca.LearnedDuals(h).state_dict().items()}
    target.load_state_dict(state, assign=True)
    check_graph_state(state["graph_fingerprint"], ca.LearnedDuals(h))


# ---- ca_rev226 (design.md §4 truth audit, part 2): the modules' recorded state and their refusals


def test_ca_rev226_the_duals_modules_record_the_documented_buffers():
    """design.md §4 (modules): LearnedDuals and AmortisedDuals keep their graph's fingerprint "a uint8 buffer
    ``graph_fingerprint``" (16 byte values); AmortisedDuals records its temperatures in "a float64 buffer
    ``built_temperature``" and, on a graph that is not a hierarchy, its sweeps in "an int64 buffer
    ``built_sweeps``"; ``sweeps`` defaults to 3."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2), (1, 1)])
    g = ca.Graph.axial((4, 4))
    for module in (ca.LearnedDuals(h), ca.AmortisedDuals(h), ca.AmortisedDuals(g)):
        fingerprint = dict(module.named_buffers())["graph_fingerprint"]
        assert fingerprint.dtype == torch.uint8 and tuple(fingerprint.shape) == (16,)
    for module in (ca.AmortisedDuals(h, [2.0, 0.5, 1.0]), ca.AmortisedDuals(g, [2.0, 0.5, 1.0])):
        built = dict(module.named_buffers())["built_temperature"]
        assert built.dtype == torch.float64 and built.tolist() == [2.0, 0.5, 1.0]
    sweeps = dict(ca.AmortisedDuals(g).named_buffers())["built_sweeps"]
    assert sweeps.dtype == torch.int64 and int(sweeps) == 3
    assert "built_sweeps" not in dict(ca.AmortisedDuals(h).named_buffers())


def test_ca_rev226_amortised_duals_on_another_device_than_the_scores_are_a_value_error():
    """design.md §4: AmortisedDuals' "parameters must be on the scores' device (a ValueError: torch convolves
    CPU features with a meta weight into duals of uninitialised memory)" (ca_rev176's test accepts three types)."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    generator = torch.Generator().manual_seed(0)
    scores = [2 * torch.randn((2,) + s, generator=generator) for s in h.shapes]
    with pytest.raises(ValueError, match="AmortisedDuals' parameters are on meta, the scores on cpu"):
        ca.AmortisedDuals(h).to("meta")(scores)


# ---- ca_rev242 (torch.func on torch 2.7)
@pytest.mark.parametrize("case", ["softmax-parameter-in-a-list", "learned_dual-amortised-on-a-graph"])
def test_functional_call_and_torch_func_grad_differentiate_the_layer_as_autograd_does(case):
    """torch.func.functional_call + grad over a ConsistentAttention's parameters (its learned
    temperature, its duals' network) must give autograd's gradient.  On torch 2.7.1 both cases
    raised "Cannot access data pointer": validation read a list of 0-d temperatures (a Parameter
    in a list; the per-map temperatures AmortisedDuals reads on a graph) by .tolist() of a wrapped
    tensor (passes trivially on the torch versions that read such a tensor)."""
    if case == "softmax-parameter-in-a-list":
        h = ca.Hierarchy.grid([(4, 4), (2, 2)])
        layer = ca.ConsistentAttention(h, "softmax", temperature=[torch.nn.Parameter(torch.tensor(0.6)), 1.1])
    else:
        h = ca.Graph.axial((4, 3))
        temperature = torch.nn.Parameter(torch.tensor([0.5, 0.9, 1.3]))
        layer = ca.ConsistentAttention(h, "learned_dual", temperature=temperature, duals="amortised")
    layer = layer.double()
    generator = torch.Generator().manual_seed(0)
    scores = [2 * torch.randn((2,) + s, generator=generator, dtype=torch.float64) for s in h.shapes]
    weights = torch.randn(scores[0].shape, generator=generator, dtype=torch.float64)
    params = {name: p.detach() + 0.1 for name, p in layer.named_parameters()}

    def loss(ps):
        return (torch.func.functional_call(layer, ps, (scores,)).probs[0] * weights).sum()

    leaves = {name: p.clone().requires_grad_() for name, p in params.items()}
    want = torch.autograd.grad(loss(leaves), list(leaves.values()), allow_unused=True)
    got = torch.func.grad(loss)(params)
    for (name, p), w in zip(params.items(), want):
        torch.testing.assert_close(got[name], torch.zeros_like(p) if w is None else w, rtol=1e-10, atol=1e-12)


# ---- ca_rev262 (hostile review of nn.py)

@pytest.mark.parametrize("scale", ["bounded", "learned"])
def test_ca_rev262_a_model_holding_a_score_head_scripts_and_gives_its_scores(scale):
    """torch.jit.script of a model with a ScoreHead (the head is plain convolutions) failed inside
    torch ("hasattr's first argument must be an object"); scripted, it must give the head's scores,
    refuse features of the wrong rank, and keep its state (no log_gain in a bounded head's)."""
    torch.manual_seed(0)
    head = ca.ScoreHead(4, 3, scale=scale)
    if scale == "learned":
        with torch.no_grad():
            head.log_gain.fill_(0.7)
    features = torch.randn(2, 4, 5, 6)
    scripted = torch.jit.script(head)
    torch.testing.assert_close(scripted(features), head(features), rtol=0, atol=0)
    with pytest.raises(Exception, match="spatial dimension"):
        scripted(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="2 spatial dimension"):
        head(torch.randn(2, 4, 5))
    assert ("log_gain" in head.state_dict()) == (scale == "learned")
    assert [n for n, _ in head.named_parameters()][0] == ("log_gain" if scale == "learned" else "embed.weight")


@pytest.mark.parametrize("make", [
    lambda: ca.LearnedDuals(H), lambda: ca.AmortisedDuals(H),
    lambda: ca.ConsistentAttention(H, "exact"), lambda: ca.ConsistentAttention(H, "learned_dual", duals="amortised")])
def test_ca_rev262_scripting_a_layer_or_its_duals_is_refused_naming_the_module(make):
    """torch.jit.script of these modules (or of a model holding one) raised torch's "keyword-arg
    expansion is not supported" or "Unknown type annotation: 'Tensor'", naming none of them."""
    module = make()

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

    for target in (module, Model()):
        with pytest.raises(TypeError, match=f"{type(module).__name__} cannot be scripted with torch.jit.script"):
            torch.jit.script(target)
    scores = [torch.randn((2,) + s) for s in H.shapes]
    if isinstance(module, ca.ConsistentAttention):  # the module is as it was
        torch.testing.assert_close(module(scores).probs[0], copy.deepcopy(module)(scores).probs[0])


# ---- ca_rev275 (hostile review of the session's diff)

def test_ca_rev275_a_bounded_score_head_pickled_before_log_gain_was_registered_still_runs():
    """A bounded ScoreHead saved whole before ca_rev262 holds no log_gain entry (it is registered as None now);
    __setstate__ supplies it: without it, forward and gain raised AttributeError. No test covered it (the
    line could be dropped with the suite green)."""
    head = ca.ScoreHead(in_channels=3, embed_channels=4)
    old = copy.deepcopy(head)
    del old._parameters["log_gain"]  # what an object pickled before the registration holds
    features = torch.randn(2, 3, 5, 5)
    restored = copy.deepcopy(old)  # (pickled and unpickled: __setstate__)
    assert torch.equal(restored(features), head(features)) and restored.gain() == 1.0
    assert set(restored.state_dict()) == set(head.state_dict())
