"""convex_attention.paper.sanity: map ablation, map statistics and the model-parameter randomisation
check."""
import math

import numpy as np
import pytest
import torch
from helpers import trained_looking

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
    with pytest.raises(ValueError, match="different shapes"):
        rank_correlation(a, a[:2])
    with pytest.raises(ValueError, match="different shapes"):  # as many cells, but not the same pixels
        rank_correlation(a, a.reshape(4, 3))
    # one ranking, any scale: exactly 1 and -1, never a rounding step past them
    for n in range(2, 60):
        v = g.normal(size=n)
        assert -1.0 <= rank_correlation(v, 3 * v + 2) <= 1.0 and -1.0 <= rank_correlation(v, -v) <= 1.0


def test_balanced_accuracies_are_nan_with_one_class_present():
    """Both balanced accuracies follow balanced_accuracy_at's rule: with one class the mean of
    the recalls present would score one class's recall as balanced."""
    from convex_attention.paper.sanity import classification

    m = classification(torch.log(torch.tensor([[0.1, 0.9], [0.8, 0.2]])), torch.tensor([1, 1]), 0.5)
    assert math.isnan(m["bacc"]) and math.isnan(m["bacc_argmax"]) and math.isnan(m["auc"])
    assert m["acc"] == 0.5


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


@pytest.mark.slow  # every post-hoc method on a model and its randomised copies (~1.4 s); the rows
# themselves are checked fast against scipy in test_randomisation_check_rows_against_scipy
def test_randomisation_check_compares_every_explanation(monkeypatch):
    import convex_attention.paper.sanity as sanity

    model = _tiny("exact")
    images = _data(4).images[:2]
    rows = sanity.randomisation_check(model, images, seed=1, labels=torch.tensor([1, 0]))
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
    same = sanity.randomisation_check(model, images, seed=1, labels=torch.tensor([1, 0]))
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


def test_predict_keeps_the_order_every_batch_and_evaluation_mode():
    from convex_attention.paper.sanity import predict

    model, data = _tiny("exact"), _data(5)
    model.train()  # predict must switch to evaluation mode itself (BatchNorm: running statistics)
    pred = predict(model, data, batch_size=2, keep_maps=True)  # 3 batches: 2 + 2 + 1
    model.eval()
    with torch.no_grad():
        out = model(data.images)
    assert pred["logits"].dtype == torch.float64 and torch.equal(pred["labels"], torch.as_tensor(data.labels))
    assert torch.allclose(pred["logits"], out.logits.double(), atol=1e-5)
    assert len(pred["maps"]) == len(out.maps) == 2 and len(pred["scores"]) == 2
    for got, expected in zip(pred["maps"] + pred["scores"], list(out.maps) + list(out.scores)):
        assert got.shape == expected.shape and torch.allclose(got, expected.double(), atol=1e-5)
    assert pred["violation"].shape == (5,)


def test_balanced_accuracy_threshold_is_inclusive_and_argmax_metrics_by_hand():
    from sklearn.metrics import balanced_accuracy_score

    from convex_attention.paper.sanity import balanced_accuracy_at, classification

    assert balanced_accuracy_at([0.5, 0.2], [1, 0], 0.5) == 1.0  # p1 >= threshold predicts class 1
    assert math.isnan(balanced_accuracy_at([0.5, 0.2], [1, 0], math.inf))
    # argmax predictions: TN = 3, FP = 1, FN = 2, TP = 2 (recalls 3/4 and 2/4; not symmetric in pred and y)
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p1 = np.array([0.1, 0.2, 0.3, 0.8, 0.4, 0.45, 0.9, 0.7])
    m = classification(torch.log(torch.tensor(np.stack([1 - p1, p1], 1))), torch.tensor(y), 0.5)
    assert math.isclose(m["bacc_argmax"], (3 / 4 + 2 / 4) / 2)
    assert math.isclose(m["bacc_argmax"], balanced_accuracy_score(y, (p1 > 0.5).astype(int)))
    assert math.isclose(m["acc"], 5 / 8)


def test_map_statistics_per_image_means_against_scipy():
    from scipy.stats import entropy as scipy_entropy

    from convex_attention.paper.sanity import map_statistics

    p = np.array([[1 - 3e-4, 1e-4, 1e-4, 1e-4], [0.4, 0.3, 0.2, 0.1]])  # two images, different sharpness
    (s,) = map_statistics([torch.tensor(p).view(2, 2, 2)], [])
    h = [scipy_entropy(row) for row in p]  # nats
    assert s["level"] == 0 and s["cells"] == 4
    assert math.isclose(s["entropy"], np.mean(h), rel_tol=1e-12)
    assert math.isclose(s["entropy_ratio"], np.mean(h) / math.log(4), rel_tol=1e-12)
    assert math.isclose(s["n_max_p"], 4 * (p[0].max() + p[1].max()) / 2, rel_tol=1e-12)
    assert math.isnan(s["score_range"])  # no scores (a model without them hands [])
    levels = map_statistics([torch.full((1, 2, 2), 0.25), torch.full((1, 3, 3), 1 / 9)])
    assert [e["level"] for e in levels] == [0, 1] and [e["cells"] for e in levels] == [4, 9]


def test_uniform_and_shuffled_maps_of_chosen_levels_only():
    from convex_attention.paper.sanity import shuffled_maps, uniform_maps

    cells = torch.arange(1.0, 17.0) / 136  # 16 distinct values
    maps = [torch.stack([cells, cells]).view(2, 4, 4), torch.stack([cells, cells.flip(0)]).view(2, 4, 4)]
    u = uniform_maps(maps, (1,))
    assert torch.equal(u[0], maps[0]) and torch.equal(u[1], torch.full((2, 4, 4), 1 / 16))
    s = shuffled_maps(maps, torch.Generator().manual_seed(0), (1,))
    assert torch.equal(s[0], maps[0]) and not torch.equal(s[1], maps[1])
    assert torch.equal(s[1].flatten(1).sort(1).values, maps[1].flatten(1).sort(1).values)
    # independently per image: two images with the same cells are permuted differently
    both = shuffled_maps(maps, torch.Generator().manual_seed(0))[0]
    assert not torch.equal(both[0], both[1])
    # seeded by the generator, not the global RNG
    torch.manual_seed(123)
    first = shuffled_maps(maps, torch.Generator().manual_seed(5))
    torch.manual_seed(456)
    second = shuffled_maps(maps, torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_randomised_copy_is_the_seeded_initialisation():
    from convex_attention.paper.models import AttentionUNet
    from convex_attention.paper.sanity import randomised_copy

    model = _tiny("exact")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        by_hand = AttentionUNet(config=model.config).state_dict()
    fresh = randomised_copy(model, seed=7).state_dict()
    assert all(torch.equal(fresh[k], by_hand[k]) for k in by_hand)
    other = randomised_copy(model, seed=8).state_dict()
    assert not torch.equal(other["classifier.weight"], fresh["classifier.weight"])


def test_native_form_by_hand():
    from convex_attention.paper.sanity import native_form

    attribution = torch.tensor([[[1.0, -2.0], [3.0, -4.0]], [[-5.0, 1.0], [2.0, 0.5]]])  # (C=2, H=2, W=2)
    assert torch.equal(native_form(attribution), torch.tensor([[6.0, 3.0], [5.0, 4.5]], dtype=torch.float64))
    assert torch.equal(native_form(attribution, True), torch.tensor([[-4.0, -1.0], [5.0, -3.5]], dtype=torch.float64))
    grid = torch.tensor([[0.5, -1.0, 2.0], [-3.0, 0.0, 1.0]])  # (h=2, w=3), e.g. GradCAM before its ReLU
    assert torch.equal(native_form(grid), grid.abs().double())
    assert torch.equal(native_form(grid, True), grid.double())


def test_randomisation_check_rows_against_scipy(monkeypatch):
    from scipy.stats import spearmanr

    import convex_attention.paper.sanity as sanity
    from convex_attention.paper.models import AttentionUNet

    calls = []

    def fake_explanations(model, images, target, posthoc, labels=None):  # new, signed maps on every call
        g = torch.Generator().manual_seed(len(calls))
        maps = {("attention", 0): torch.randn(len(images), 3, 3, generator=g),
                ("lrp", -1): torch.randn(len(images), 2, 3, 3, generator=g)}
        calls.append({"model": model, "classifier": model.classifier.weight.detach().clone(), "target": target,
                      "posthoc": posthoc, "maps": maps})
        return maps

    monkeypatch.setattr(sanity, "explanations", fake_explanations)
    model, images = _tiny("exact"), torch.zeros(3, 1, 32, 32)
    original = fake_explanations(model, images, "pred", False)
    rows = sanity.randomisation_check(model, images, target="pred", seed=5, posthoc=False, original=original)
    stages = sanity.cascade_stages(model)
    assert len(calls) == 1 + len(stages)  # the given original is used, not recomputed
    assert all(c["target"] == "pred" and c["posthoc"] is False and c["model"] is not model for c in calls[1:])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        fresh = AttentionUNet(config=model.config).classifier.weight.detach()
    assert all(torch.equal(c["classifier"], fresh) for c in calls[1:])  # the classifier is re-initialised first
    assert len(rows) == len(stages) * 2 * 3
    for r in rows:
        m = original[(r["method"], r["level"])][r["position"]].double().numpy()
        x = calls[1 + r["stage_index"]]["maps"][(r["method"], r["level"])][r["position"]].double().numpy()
        assert r["stage"] == stages[r["stage_index"]][0]
        if m.ndim == 3:  # input attribution: summed over channels (absolute values, or with signs)
            m_abs, x_abs, m_signed, x_signed = np.abs(m).sum(0), np.abs(x).sum(0), m.sum(0), x.sum(0)
        else:
            m_abs, x_abs, m_signed, x_signed = np.abs(m), np.abs(x), m, x
        assert math.isclose(r["spearman_abs"], spearmanr(m_abs.ravel(), x_abs.ravel()).statistic, rel_tol=1e-9)
        assert math.isclose(r["spearman_signed"], spearmanr(m_signed.ravel(), x_signed.ravel()).statistic,
                            rel_tol=1e-9)
    calls.clear()  # without ``original``: the trained model's maps are computed the same way
    rows = sanity.randomisation_check(model, images, target="pred", seed=5, posthoc=False)
    assert calls[0]["model"] is model and len(calls) == 1 + len(stages) and len(rows) == len(stages) * 2 * 3
    assert all(c["target"] == "pred" and c["posthoc"] is False for c in calls)


def test_replacing_maps_by_themselves_changes_nothing_with_a_learned_temperature():
    from convex_attention.paper.sanity import maps_replaced

    model = _tiny("softmax", learn_temperature=True)
    with torch.no_grad():
        model.log_temperature.fill_(1.5)  # far from the layer's own temperature
    images = _data(4).images
    with torch.no_grad():
        own = model(images)
        with maps_replaced(model, lambda maps: maps):
            same = model(images)
    assert all(torch.equal(a, b) for a, b in zip(own.maps, same.maps)) and torch.equal(own.logits, same.logits)


def test_map_ablation_of_sharp_maps_against_average_pooling_by_hand():
    from sklearn.metrics import roc_auc_score

    from convex_attention.paper.sanity import classification, map_ablation, maps_replaced, predict, shuffled_maps

    model, data = _tiny("exact"), _data(16)
    with torch.no_grad():
        for head in model.heads.values():  # an untrained model's maps are almost uniform: sharpen them
            head.score.weight.mul_(1000.0)
        own = torch.softmax(model(data.images).logits.double(), 1)[:, 1].numpy()
        feats = model.features(data.images)
        pooled = model.classifier(torch.cat([feats[k].mean((2, 3)) for k in (3, 4)], 1))  # uniform maps
        uniform = torch.softmax(pooled.double(), 1)[:, 1].numpy()
    y = np.asarray(data.labels).astype(int)
    threshold = float(np.median(own))

    def bacc(p1):
        return np.mean([np.mean((p1[y == c] >= threshold) == c) for c in (0, 1)])

    result = map_ablation(model, data, threshold=threshold, seed=4)
    assert math.isclose(result["auc"], roc_auc_score(y, own)) and math.isclose(result["bacc"], bacc(own))
    assert math.isclose(result["auc_uniform"], roc_auc_score(y, uniform), abs_tol=1e-9)
    assert math.isclose(result["bacc_uniform"], bacc(uniform))
    assert result["delta_auc_uniform"] != 0 and result["delta_auc_shuffled"] != 0  # the check is not vacuous
    for name in ("uniform", "shuffled"):  # ablated minus intact
        for metric in ("auc", "bacc"):
            assert result[f"delta_{metric}_{name}"] == result[f"{metric}_{name}"] - result[metric]
    for k in (0, 1):  # each level alone shuffled, from the seed: only that level's cells move
        g = torch.Generator().manual_seed(4)
        with maps_replaced(model, lambda maps, k=k, g=g: shuffled_maps(maps, g, (k,))):
            pred = predict(model, data)
        expected = classification(pred["logits"], pred["labels"], threshold)
        assert result[f"auc_shuffled_L{k}"] == expected["auc"] and result[f"bacc_shuffled_L{k}"] == expected["bacc"]
    alone = map_ablation(model, data, threshold=threshold, seed=4, per_level=False)
    assert {k: v for k, v in result.items() if "_L" not in k} == alone


# ----------------------------------------------------------------------------- review 35 (strict xfail: known defects)


def test_rev35_test_auc_ranks_by_the_log_odds_not_the_saturated_probability():
    from sklearn.metrics import roc_auc_score

    from convex_attention.paper.sanity import classification

    logits = torch.tensor([[0.0, 40.0], [0.0, 50.0], [0.0, 60.0], [0.0, -5.0]])
    labels = torch.tensor([0, 1, 1, 0])
    expected = roc_auc_score(labels.numpy(), (logits[:, 1] - logits[:, 0]).numpy())  # 1.0: the positives rank first
    assert expected == 1.0
    assert classification(logits, labels, 0.5)["auc"] == expected  # it gives 0.75 (three images tied at p = 1.0)


def test_rev35_balanced_accuracy_at_the_validation_threshold_agrees_with_its_log_odds_rule():
    from convex_attention.paper.sanity import classification
    from convex_attention.paper.train import classification_metrics

    val = torch.tensor([[0.0, 35.0], [0.0, 39.0], [0.0, 41.0], [0.0, 45.0]])
    chosen = classification_metrics(val, torch.tensor([0, 0, 1, 1]))
    assert chosen["val_balanced_acc_at_threshold"] == 1.0  # the log-odds threshold 41 separates them
    test = torch.tensor([[0.0, 38.0], [0.0, 50.0]])  # log-odds 38 < 41 (negative), 50 >= 41 (positive)
    assert chosen["val_threshold"] == 1.0 and chosen["val_threshold_log_odds"] == 41.0  # p rounds to 1.0 there
    both = classification(test, torch.tensor([0, 1]), chosen["val_threshold"], chosen["val_threshold_log_odds"])
    assert both["bacc"] == 1.0  # on p(class 1) alone it gives 0.5
    # a checkpoint written before the log-odds were stored: the probability, as before
    assert classification(test, torch.tensor([0, 1]), chosen["val_threshold"])["bacc"] == 0.5


# ----------------------------------------------------------------------------- review ca_rev69


def test_ca_rev69_rank_correlation_of_a_nan_map_is_not_minus_one():
    from convex_attention.paper.sanity import rank_correlation

    a = np.array([[1.0, 2.0], [float("nan"), 4.0]])
    b = np.array([[1.0, 2.0], [3.0, 4.0]])
    try:
        r = rank_correlation(a, b)
    except ValueError:
        return  # refusing the map is a fix too
    assert math.isnan(r), r  # it gives -1.0: perfect anti-correlation, reported as a number


def test_ca_rev69_balanced_accuracy_of_nan_probabilities_is_not_a_number():
    from convex_attention.paper.sanity import balanced_accuracy_at

    try:
        bacc = balanced_accuracy_at([math.nan] * 4, [0, 1, 0, 1], 0.5)
    except ValueError:
        return  # refusing them is a fix too
    assert math.isnan(bacc), bacc  # it gives 0.5: every NaN predicted as class 0


# ---- ca_rev215 (mutation review of 38d417d, reports, sanity, data and models): tests that kill surviving mutants


@pytest.mark.parametrize("threshold_log_odds", [None, math.nan, math.inf])
def test_ca_rev215_a_threshold_on_log_odds_that_is_no_number_falls_back_to_the_probability_threshold(
        threshold_log_odds):
    """``classification`` reads ``threshold`` on p(class 1) where the log-odds threshold is
    missing or not finite (older checkpoints), not a NaN balanced accuracy (mutant: the
    ``isfinite`` test dropped).  By hand: p1 = sigmoid(2, -1, 1, -2) = .88, .27, .73, .12;
    at 0.8 only the first image is predicted 1: recalls 1/2 (class 1) and 2/2 (class 0)."""
    from convex_attention.paper.sanity import classification

    logits = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    out = classification(logits, torch.tensor([1, 0, 1, 0]), 0.8, threshold_log_odds)
    assert out["bacc"] == pytest.approx(0.75)
    assert out["bacc_argmax"] == pytest.approx(1.0) and out["auc"] == pytest.approx(1.0)


def test_ca_rev215_the_cascade_reinitialises_the_batchnorm_statistics_of_a_trained_model():
    """BatchNorm's running statistics are re-initialised with their stage (module docstring);
    an untrained model's are already the fresh ones (0 and 1), so the model's are set apart
    first (mutant: running statistics kept from the trained model)."""
    from convex_attention.paper.sanity import cascading_copies, randomised_copy

    model = _tiny("softmax")
    running = [k for k in model.state_dict() if k.endswith(("running_mean", "running_var"))]
    assert running  # the paper's norm is BatchNorm
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buffer.fill_(7.0)
    fresh = randomised_copy(model, seed=1).state_dict()
    *_, (stage, last) = cascading_copies(model, seed=1)
    state = last.state_dict()
    for key in running:
        assert torch.equal(state[key], fresh[key]) and not torch.equal(state[key], torch.full_like(state[key], 7.0)), \
            (stage, key)


# ---- ca_rev252 (hostile review of paper.explain / paper.sanity)

def test_ca_rev252_rank_correlation_is_scipys_spearman_ties_included_and_nan_for_a_constant_map():
    """Against scipy.stats.spearmanr on many small maps with ties (mutants: ranks without tie
    averaging, Pearson of the values, a constant map read as 0 or 1)."""
    from scipy.stats import spearmanr

    from convex_attention.paper.sanity import rank_correlation

    rng = np.random.default_rng(252)
    for _ in range(100):
        a = rng.integers(0, 4, (5, 6)).astype(float)
        b = rng.normal(size=(5, 6)) if rng.random() < 0.5 else rng.integers(0, 3, (5, 6)).astype(float)
        want = float(spearmanr(a.ravel(), b.ravel()).statistic)
        got = rank_correlation(a, b)
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-12)
    assert math.isnan(rank_correlation(np.zeros((4, 4)), rng.normal(size=(4, 4))))
    assert math.isnan(rank_correlation(rng.normal(size=(4, 4)), np.full((4, 4), 3.0)))


def test_ca_rev252_each_cascade_stage_reinitialises_its_layers_only_and_leaves_the_model_alone():
    """Stage by stage, exactly the stage's parameters and buffers change (top first: classifier,
    heads, then blocks 4 .. 1), to the values of a fresh model of the seed; the last copy is that
    fresh model; the trained model is untouched, and the same seed gives the same rows
    (mutants: a stage's prefix wrong, the model's own state mutated, the seed ignored)."""
    from convex_attention.paper.sanity import cascading_copies, randomisation_check, randomised_copy

    model = _tiny("softmax")
    trained_looking(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = randomised_copy(model, seed=4).state_dict()
    previous = before
    seen = []
    for stage, copy_ in cascading_copies(model, seed=4):
        state = {k: v.clone() for k, v in copy_.state_dict().items()}
        changed = {k.split(".")[0] + ("." + k.split(".")[1] if k.startswith("blocks.") else "")
                   for k in state if not torch.equal(state[k], previous[k])}
        seen.append((stage, sorted(changed)))
        previous = state
    assert seen == [("classifier", ["classifier"]), ("attention", ["heads"]), ("block4", ["blocks.3"]),
                    ("block3", ["blocks.2"]), ("block2", ["blocks.1"]), ("block1", ["blocks.0"])]
    assert all(torch.equal(previous[k], fresh[k]) for k in fresh)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    torch.manual_seed(1)
    images, labels = torch.rand(2, model.config.in_channels, 32, 32), torch.tensor([1, 0])
    first = randomisation_check(model, images, seed=4, posthoc=False, labels=labels)
    again = randomisation_check(model, images, seed=4, posthoc=False, labels=labels)
    other = randomisation_check(model, images, seed=5, posthoc=False, labels=labels)
    key = [(r["stage"], r["level"], r["position"]) for r in first]
    assert key == [(r["stage"], r["level"], r["position"]) for r in again]
    values = np.array([r["spearman_abs"] for r in first])
    assert np.isfinite(values).all()
    np.testing.assert_array_equal(values, [r["spearman_abs"] for r in again])
    assert not np.array_equal(values, [r["spearman_abs"] for r in other])
    # the classifier alone re-initialised leaves the attention maps as they were: ρ = 1
    assert all(r["spearman_abs"] == pytest.approx(1.0) for r in first if r["stage"] == "classifier")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_randomised_copy_draws_from_the_cpu_generator_alone_and_puts_it_back(monkeypatch):
    """ca_rev252's note: torch.manual_seed reseeds every GPU's generator too, which fork_rng(devices=[])
    does not restore; the copy's weights are those torch.manual_seed(seed) gave."""
    from convex_attention.paper.models import AttentionUNet
    from convex_attention.paper.sanity import randomised_copy

    model = AttentionUNet(method="softmax", width=4, image_size=32, embed_channels=8)
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    before = torch.random.get_rng_state()
    fresh = randomised_copy(model, seed=3)
    assert reseeded == [] and torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(3)
    want = type(model)(config=model.config)
    for (name, got), (_, ref) in zip(fresh.state_dict().items(), want.state_dict().items()):
        assert torch.equal(got, ref), name
