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
