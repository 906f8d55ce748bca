"""convex_attention.paper.sanity: map ablation, map statistics and the model-parameter randomisation
check."""
import math

import numpy as np
import pytest
import torch

from convex_attention.paper.models import AttentionUNet
from convex_attention.paper.protocol import (
    SplitSpec,
    build_split,
)


def _tiny(method="softmax", **kw):
    torch.manual_seed(0)
    return AttentionUNet(method=method, width=4, image_size=32, embed_channels=8, **kw).eval()


def _data(n=12, seed=3):
    return build_split(SplitSpec("test", seed, n, 0.3, ("inverted", "split", "mottled")), "synthetic", 32, 4)


def test_uniform_and_shuffled_maps():
    from convex_attention.paper.sanity import shuffled_maps, uniform_maps

    g = torch.Generator().manual_seed(0)
    maps = [torch.softmax(torch.randn(3, 8, 8, generator=g).flatten(1), 1).view(3, 8, 8),
            torch.softmax(torch.randn(3, 4, 4, generator=g).flatten(1), 1).view(3, 4, 4)]
    for u, p in zip(uniform_maps(maps), maps):
        assert u.shape == p.shape and torch.allclose(u, torch.full_like(p, 1 / p[0].numel()))
    shuffled = shuffled_maps(maps, torch.Generator().manual_seed(1))
    for s, p in zip(shuffled, maps):
        assert torch.equal(s.flatten(1).sort(1).values, p.flatten(1).sort(1).values)  # same values per image
        assert not torch.equal(s, p)


def test_replaced_maps_drive_the_classifier_and_are_restored():
    from convex_attention.paper.sanity import maps_replaced, uniform_maps

    model = _tiny("exact")
    images = _data(4).images
    with torch.no_grad():
        own = model(images).logits
        with maps_replaced(model, uniform_maps):
            uniform = model(images).logits
        again = model(images).logits
        feats = model.features(images)
        by_hand = model.classifier(torch.cat([feats[k].mean((2, 3)) for k in (3, 4)], 1))
    assert torch.allclose(uniform, by_hand, atol=1e-6)  # uniform attention = average pooling
    assert torch.equal(own, again) and "attend" not in vars(model.attention)


def test_map_ablation_reports_the_changes():
    from convex_attention.paper.sanity import (
        classification,
        map_ablation,
        maps_replaced,
        predict,
        uniform_maps,
    )

    model, data = _tiny("softmax"), _data(16)
    result = map_ablation(model, data, threshold=0.5)
    with maps_replaced(model, uniform_maps):
        pred = predict(model, data)
    expected = classification(pred["logits"], pred["labels"], 0.5)
    assert result["bacc_uniform"] == expected["bacc"] and result["auc_uniform"] == expected["auc"]
    assert result["delta_bacc_uniform"] == expected["bacc"] - result["bacc"]
    for key in ("bacc_shuffled", "delta_bacc_shuffled", "delta_auc_uniform", "delta_auc_shuffled"):
        assert key in result
    from convex_attention.paper.models import PlainCNN

    with pytest.raises(ValueError, match="attention maps"):
        map_ablation(PlainCNN(width=4, image_size=32), data, 0.5)


def test_balanced_accuracy_at_a_threshold_and_test_metrics():
    from convex_attention.paper.sanity import balanced_accuracy_at, classification

    p1, y = np.array([0.1, 0.4, 0.6, 0.9, 0.7]), np.array([0, 0, 1, 1, 0])
    assert math.isclose(balanced_accuracy_at(p1, y, 0.5), (2 / 3 + 1.0) / 2)  # class 0: 2 of 3 right; class 1: 2 of 2
    assert balanced_accuracy_at(p1, y, 0.8) == (1.0 + 0.5) / 2
    assert math.isnan(balanced_accuracy_at(p1, y, math.nan))
    assert math.isnan(balanced_accuracy_at([0.9, 0.8], [1, 1], 0.5))  # one class: not balanced (it said 1.0)
    logits = torch.log(torch.tensor(np.stack([1 - p1, p1], 1)))
    m = classification(logits, torch.tensor(y), 0.5)
    assert math.isclose(m["bacc"], 5 / 6) and math.isclose(m["auc"], 5 / 6)
    with pytest.raises(ValueError, match="two-class"):
        classification(torch.zeros(3, 3), torch.zeros(3), 0.5)


def test_map_statistics_by_hand():
    from convex_attention.paper.sanity import map_statistics

    uniform = torch.full((2, 4, 4), 1 / 16)
    onehot = torch.zeros(2, 4, 4)
    onehot[:, 0, 0] = 1.0
    scores = torch.zeros(2, 4, 4)
    scores[0, 1, 1], scores[1, 2, 2] = 3.0, -1.0
    u, o = map_statistics([uniform, onehot], [scores, scores])
    assert math.isclose(u["n_max_p"], 1.0) and math.isclose(u["entropy_ratio"], 1.0)
    assert math.isclose(u["entropy"], math.log(16))
    assert math.isclose(o["n_max_p"], 16.0) and abs(o["entropy"]) < 1e-12
    assert math.isclose(u["score_range"], 2.0)  # (3 + 1) / 2
    assert math.isnan(map_statistics([uniform])[0]["score_range"])


def test_rank_correlation():
    from convex_attention.paper.sanity import rank_correlation

    a = np.arange(12.0).reshape(3, 4)
    assert math.isclose(rank_correlation(a, a * 5 + 1), 1.0) and math.isclose(rank_correlation(a, -a), -1.0)
    assert math.isnan(rank_correlation(a, np.zeros((3, 4))))
    from scipy.stats import spearmanr

    g = np.random.default_rng(0)
    x, y = g.normal(size=50), g.integers(0, 4, size=50)  # ties in y
    assert math.isclose(rank_correlation(x, y), spearmanr(x, y).statistic, rel_tol=1e-12)
    with pytest.raises(ValueError, match="different sizes"):
        rank_correlation(a, a[:2])


def test_randomised_copy_is_fresh_and_leaves_the_rng_alone():
    from convex_attention.paper.sanity import randomised_copy

    model = _tiny("learned_dual", learn_temperature=True)
    with torch.no_grad():
        model.log_temperature.fill_(0.5)
    state = torch.random.get_rng_state()
    fresh = randomised_copy(model, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert fresh.config == model.config and not fresh.training
    assert not torch.equal(fresh.blocks[0][0].weight, model.blocks[0][0].weight)
    assert float(fresh.log_temperature.detach()) == 0.0
    again = randomised_copy(model, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), again.state_dict().values()))


def test_map_ablation_per_level():
    from convex_attention.paper.sanity import classification, map_ablation, maps_replaced, predict, uniform_maps

    model, data = _tiny("exact"), _data(16)
    result = map_ablation(model, data, threshold=0.5, seed=4)
    for k in (0, 1):
        with maps_replaced(model, lambda maps, k=k: uniform_maps(maps, (k,))):
            pred = predict(model, data)
        expected = classification(pred["logits"], pred["labels"], 0.5)
        assert result[f"auc_uniform_L{k}"] == expected["auc"]
        assert result[f"delta_auc_uniform_L{k}"] == expected["auc"] - result["auc"]
        assert f"delta_auc_shuffled_L{k}" in result and f"delta_bacc_shuffled_L{k}" in result
    assert "delta_auc_uniform_L2" not in result
    # the all-levels rows do not depend on whether the levels are ablated one by one too
    alone = map_ablation(model, data, threshold=0.5, seed=4, per_level=False)
    assert {k: v for k, v in result.items() if "_L" not in k} == alone


def test_the_cascade_reinitialises_from_the_top():
    from convex_attention.paper.sanity import cascade_stages, cascading_copies, randomised_copy

    model = _tiny("learned_dual", learn_temperature=True)
    stages = cascade_stages(model)
    names = [name for name, _ in stages]
    assert names == ["classifier", "attention"] + [f"block{k}" for k in range(len(model.blocks), 0, -1)]
    prefixes = [p for _, ps in stages for p in ps]
    original = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = randomised_copy(model, seed=2).state_dict()
    # every parameter belongs to one stage, so the last copy is the fully randomised model
    assert all(any(k.startswith(p) for p in prefixes) for k in original)
    done: set = set()
    for index, (stage, copy) in enumerate(cascading_copies(model, seed=2)):
        assert stage == names[index]
        done |= set(stages[index][1])
        for key, value in copy.state_dict().items():
            reinitialised = key.startswith(tuple(done))
            assert torch.equal(value, fresh[key] if reinitialised else original[key]), (stage, key)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())  # the model is untouched
    from convex_attention.paper.models import PlainCNN

    assert "attention" not in [n for n, _ in cascade_stages(PlainCNN(width=4, image_size=32))]


def test_randomisation_check_compares_every_explanation(monkeypatch):
    import convex_attention.paper.sanity as sanity

    model = _tiny("exact")
    images = _data(4).images[:2]
    rows = sanity.randomisation_check(model, images, seed=1)
    methods = {(r["method"], r["level"]) for r in rows}
    assert methods == {("attention", 0), ("attention", 1), ("gradcam", 0), ("gradcam", 1), ("deeplift", -1),
                       ("lrp", -1), ("input_x_gradient", -1), ("integrated_gradients", -1)}
    stages = sanity.cascade_stages(model)
    assert len(rows) == len(stages) * 2 * len(methods)
    assert [r["stage"] for r in rows if r["stage_index"] == 1][0] == "attention"
    for key in ("spearman_abs", "spearman_signed"):
        assert all(math.isnan(r[key]) or -1.0 <= r[key] <= 1.0 for r in rows)
    # attention maps are non-negative: absolute and signed agree there
    assert all(r["spearman_abs"] == r["spearman_signed"] or math.isnan(r["spearman_abs"])
               for r in rows if r["method"] == "attention")
    # against the model itself every explanation correlates perfectly: the comparison pairs like with like
    monkeypatch.setattr(sanity, "randomised_copy", lambda m, seed=0: m)
    same = sanity.randomisation_check(model, images, seed=1)
    for key in ("spearman_abs", "spearman_signed"):
        assert all(r[key] == pytest.approx(1.0) or math.isnan(r[key]) for r in same)
        # GradCAM of an untrained model may be 0
        assert sum(not math.isnan(r[key]) for r in same) >= len(same) - 4 * len(stages)


def test_predict_reports_no_number_for_outputs_that_are_not_finite():
    from convex_attention.paper.models import NonFiniteOutput
    from convex_attention.paper.sanity import predict

    model = _tiny("exact")
    with torch.no_grad():
        model.classifier.weight.fill_(3e38)
        model.classifier.bias.fill_(torch.finfo(torch.float32).max)
    with pytest.raises(NonFiniteOutput, match="logits .* not scored"):
        predict(model, _data(4))
