"""convex_attention.bench.cases: the timed closures (solve, then a linear loss; the consistency
loss for a method that needs duals; the amortised network inside the amortised case)."""
import torch

import convex_attention as ca
from convex_attention.bench.cases import amortised_case, make_case, shape_str, timed_case

H = ca.Hierarchy.grid([(4, 4), (2, 2)])


def test_a_case_is_a_loss_whose_backward_reaches_the_scores():
    last = {}
    forward = make_case("exact", H, 3, dtype=torch.float64, last=last)
    loss = forward()
    loss.backward()
    assert loss.dim() == 0 and last["solution"].method == "exact"
    assert shape_str(H) == "4x4+2x2"


def test_a_method_that_needs_duals_adds_its_consistency_loss():
    scores = [torch.randn((2,) + s, dtype=torch.float64, requires_grad=True) for s in H.shapes]
    weights = [torch.zeros_like(s) for s in scores]
    duals = [torch.zeros((1, 2, 2), dtype=torch.float64, requires_grad=True)]
    loss = timed_case("learned_dual", H, scores, weights, 1.0, duals, {})()
    # the linear part is zero here
    assert float(loss.detach()) == float(ca.consistency_loss(scores, duals, H).detach()) > 0
    loss.backward()
    assert duals[0].grad is not None


def test_the_amortised_case_runs_the_network_each_time():
    calls = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros((), dtype=torch.float32))

        def forward(self, scores):
            calls.append(scores[0].dtype)
            return [self.w * torch.ones((scores[0].shape[0], 2, 2))]

    scores = [torch.randn((2,) + s, dtype=torch.float64, requires_grad=True) for s in H.shapes]
    forward = amortised_case("learned_dual", H, scores, [torch.ones_like(s) for s in scores], 1.0, Net())
    forward()
    forward()
    assert calls == [torch.float32, torch.float32]  # in the network's own dtype
