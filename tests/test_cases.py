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


def _recording_solve(monkeypatch):
    """Record the arguments the case gives ``solve`` (the public entry point it times)."""
    import convex_attention.bench.cases as cases

    calls = []

    def recording(scores, h, method, **kwargs):
        calls.append(dict(scores=scores, method=method, **kwargs))
        return ca.solve(scores, h, method, **kwargs)

    monkeypatch.setattr(cases, "solve", recording)
    return calls


def test_make_case_draws_seeded_scores_and_passes_temperature_and_options():
    def probs(**kwargs):
        last = {}
        make_case("dual", H, 3, dtype=torch.float64, last=last, **kwargs)()
        return last["solution"]

    a, b, c = probs(seed=1), probs(seed=1), probs(seed=2)
    assert a.probs[0].shape == (3, 4, 4)
    assert torch.equal(a.probs[0], b.probs[0]) and not torch.equal(a.probs[0], c.probs[0])
    hot = probs(seed=1, temperature=0.5, options={"record_history": True})
    assert list(hot.temperature) == [0.5, 0.5] and "history" in hot.info and "history" not in a.info


def test_make_case_copies_given_scores_to_leaves_and_gives_shared_duals(monkeypatch):
    calls = _recording_solve(monkeypatch)
    # two equal samples
    given = [torch.randn((1,) + s, dtype=torch.float64).repeat((2,) + (1,) * len(s)).requires_grad_()
             for s in H.shapes]
    make_case("learned_dual", H, 2, dtype=torch.float64, scores=given)().backward()
    assert all(s.grad is None for s in given), "the caller's scores are copied"
    (call,) = calls
    assert [tuple(d.shape) for d in call["duals"]] == [(1, 2, 2)] and call["duals"][0].requires_grad
    leaves = call["scores"]
    assert all(s.is_leaf and s.requires_grad and s.dtype == torch.float64 for s in leaves)
    assert all(torch.equal(s, g) for s, g in zip(leaves, given))
    # the loss's weights are drawn per sample: equal samples get different gradients
    assert not torch.equal(leaves[0].grad[0], leaves[0].grad[1])


def test_timed_case_solves_at_its_temperature_with_its_options():
    scores = [torch.randn((2,) + s, dtype=torch.float64, requires_grad=True) for s in H.shapes]
    weights = [torch.zeros_like(s) for s in scores]
    duals = [torch.zeros((1, 2, 2), dtype=torch.float64, requires_grad=True)]
    last = {}
    loss = timed_case("learned_dual", H, scores, weights, 0.5, duals, {}, last)()
    assert list(last["solution"].temperature) == [0.5, 0.5]
    assert float(loss.detach()) == float(ca.consistency_loss(scores, duals, H, 0.5).detach())
    timed_case("dual", H, scores, weights, 1.0, None, {"record_history": True}, last)()
    assert "history" in last["solution"].info


def test_the_amortised_loss_is_the_linear_loss_plus_the_consistency_loss_of_the_predicted_duals(monkeypatch):
    calls = _recording_solve(monkeypatch)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.full((), 0.3, dtype=torch.float64))

        def forward(self, scores):
            assert scores[0].dtype == torch.float64  # the network's own dtype
            return [self.w * scores[1]]

    scores = [torch.randn((2,) + s, dtype=torch.float32, requires_grad=True) for s in H.shapes]
    weights = [torch.randn(s.shape) for s in scores]
    last = {}
    loss = amortised_case("learned_dual", H, scores, weights, 0.5, Net(), last)()
    sol = last["solution"]
    (call,) = calls
    assert call["duals"][0].dtype == torch.float32, "the duals are cast to the scores' dtype"
    assert list(sol.temperature) == [0.5, 0.5]
    expected = sum((p * w).sum() for p, w in zip(sol.probs, weights)) + ca.consistency_loss(
        scores, call["duals"], H, 0.5)
    assert torch.allclose(loss, expected)


# ---- ca_rev208 (mutation review of 5041573)

def test_ca_rev208_make_case_casts_given_scores_and_draws_weights_in_its_dtype(monkeypatch):
    """Kills `dtype` dropped from make_case's copy of given scores, and from its loss's weights: float64 scores
    given to a float32 case are timed in float32 (the sweep's reference rows and warm-up rely on it)."""
    calls = _recording_solve(monkeypatch)
    given = [torch.randn((2,) + s, dtype=torch.float64) for s in H.shapes]
    last = {}
    loss = make_case("softmax", H, 2, dtype=torch.float32, scores=given, last=last)()
    loss.backward()
    call = calls[0]
    assert all(s.dtype == torch.float32 and s.is_leaf and s.requires_grad for s in call["scores"])
    assert all(p.dtype == torch.float32 for p in last["solution"].probs)
    half = make_case("softmax", H, 2, dtype=torch.bfloat16, scores=given)()
    assert loss.dtype == torch.float32 and half.dtype == torch.bfloat16, "the loss's weights are in its dtype too"


def test_ca_rev208_cvxpylayers_is_timed_without_its_gradient_check_unless_the_options_ask_for_it(monkeypatch):
    """Kills the options' `check_gradient` overridden by the default (`{**options, "check_gradient": False}`): the
    docstring of timed_case, "unless the options say otherwise"."""
    import convex_attention.bench.cases as cases

    calls = []
    monkeypatch.setattr(cases, "solve", lambda *args, **kwargs: calls.append(kwargs) or ca.solve(
        args[0], args[1], "softmax", temperature=kwargs["temperature"]))
    scores = [torch.randn((1,) + s, dtype=torch.float64, requires_grad=True) for s in H.shapes]
    weights = [torch.zeros_like(s) for s in scores]
    timed_case("cvxpylayers", H, scores, weights, 1.0, None, {})()
    timed_case("cvxpylayers", H, scores, weights, 1.0, None, {"check_gradient": True})()
    assert [c["check_gradient"] for c in calls] == [False, True]
