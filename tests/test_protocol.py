"""The experiment's protocol (splits, variants fixed in advance, a test split touched once)
and its sanity checks (map ablation, model-parameter randomisation, map statistics)."""
import json
import math
import os
import subprocess

import numpy as np
import pytest
import torch

from convex_attention.paper.models import AttentionUNet
from convex_attention.paper.protocol import (
    DEFAULT_VARIANTS_PATH,
    MANIFEST,
    SplitSpec,
    TestFolderExists,
    Variant,
    Variants,
    VariantsError,
    benchmark_record,
    build_split,
    check_benchmark_verdict,
    check_disjoint,
    check_test_folder,
    claim_test_folder,
    commit_state,
    finish_test_folder,
    fit_model_free,
    image_keys,
    read_variants,
    split_specs,
    variant_grid,
    variants_digest,
)

SIZES = {"train": 6, "val": 4, "dev": 4, "test": 4, "test_heldout": 4}

# ----------------------------------------------------------------------------- splits


def test_splits_are_disjoint_and_hold_one_mimic_type_out():
    specs = split_specs("synthetic", 0, SIZES, 0.4, held_out_mimic="mottled")
    check_disjoint(specs)
    keys = [set(image_keys(s)) for s in specs.values()]
    assert all(not (a & b) for i, a in enumerate(keys) for b in keys[i + 1:])
    assert specs["val"].seed == 10_000  # the validation seed of build_datasets
    for name in ("train", "val", "dev", "test"):
        assert specs[name].mimic_types == ("inverted", "split")
    assert specs["test_heldout"].mimic_types == ("mottled",)
    assert {s.difficulty for s in specs.values()} == {0.4}
    # the images themselves differ: no image of one split appears in another
    built = {k: build_split(s, "synthetic", 32, 4) for k, s in specs.items()}
    digests = {k: {v.images[i].numpy().tobytes() for i in range(len(v))} for k, v in built.items()}
    names = list(digests)
    assert all(not (digests[a] & digests[b]) for i, a in enumerate(names) for b in names[i + 1:])
    kinds = {kind for i in range(len(built["test_heldout"])) for kind in
             build_split(specs["test_heldout"], "synthetic", 32, 4, in_memory=False).render(i)["kinds"]}
    assert kinds <= {"mottled", "lesion"} and "mottled" in kinds


def test_split_errors():
    with pytest.raises(ValueError, match="synthetic"):
        split_specs("brats", 0, SIZES, 0.5)
    with pytest.raises(ValueError, match="held-out mimic"):
        split_specs("synthetic", 0, {"test_heldout": 3}, 0.5, held_out_mimic=None)
    with pytest.raises(ValueError, match="mimic types"):
        split_specs("synthetic-blobs", 0, {"train": 3}, 0.5, held_out_mimic="split")
    with pytest.raises(ValueError, match="unknown split"):
        split_specs("synthetic", 0, {"holdout": 3}, 0.5)
    blobs = split_specs("synthetic-blobs", 3, {"train": 3, "test": 2}, 0.5)
    assert blobs["train"].mimic_types is None and len(build_split(blobs["test"], "synthetic-blobs", 32, 4)) == 2
    with pytest.raises(ValueError, match="overlap"):
        check_disjoint({"a": SplitSpec("a", 5, 3, 0.5), "b": SplitSpec("b", 5, 3, 0.5)})


def test_masks_never_reach_training_or_checkpoint_selection(monkeypatch, tmp_path):
    """The dev stage hands training only the training and the label-only validation split."""
    import convex_attention.paper.train as train_module
    from convex_attention.paper.experiment import QUICK, run_experiment

    seen = {}

    class Stop(Exception):
        pass

    def fake_train(config, datasets=None, log=None, model_class=None):
        seen["datasets"] = datasets
        raise Stop

    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.setattr("convex_attention.paper.experiment._validity", lambda *a: [])
    config = QUICK.override(image_size=32, width=4, n_train=8, n_val=6, n_dev=6, n_explain=1)
    with pytest.raises(Stop):
        run_experiment(config, str(tmp_path / "exp"), progress=False, log=lambda *a: None)
    train_set, val_set = seen["datasets"]
    specs = split_specs("synthetic", 0, {"train": 8, "val": 6}, config.difficulties[0], "mottled")
    for got, spec in ((train_set, specs["train"]), (val_set, specs["val"])):
        assert torch.equal(got.images, build_split(spec, "synthetic", 32, 4).images)


# ----------------------------------------------------------------------------- variants


def _variants_dict(**over):
    return {**Variants().to_dict(), **over}


def test_variants_round_trip_and_are_checked(tmp_path):
    v = Variants(Variant(temperature=0.3, alpha=1.0, head="learned", learn_temperature=True, duals="amortised",
                         upsampling="bilinear"), (0.2, 0.7), "split", note="chosen on dev")
    assert Variants.from_dict(json.loads(json.dumps(v.to_dict()))) == v
    path = tmp_path / "v.json"
    path.write_text(json.dumps(v.to_dict()))
    assert read_variants(str(path)) == v and len(variants_digest(str(path))) == 64
    for bad, words in (({"format": "other"}, "format"), ({"colour": 1}, "unknown field"),
                       ({"upsampling": "cubic"}, "upsampling"), ({"difficulties": [0.5, 0.5]}, "difficulties"),
                       ({"difficulties": [1.5]}, "difficulties"), ({"held_out_mimic": "round"}, "held_out_mimic"),
                       ({"model": {**Variants().to_dict()["model"], "head": "wide"}}, "model.head"),
                       ({"model": {**Variants().to_dict()["model"], "temperature": 0}}, "model.temperature"),
                       ({"model": {"temperature": 1.0}}, "missing")):
        with pytest.raises(VariantsError, match=words):
            Variants.from_dict(_variants_dict(**bad))
    path.write_text('{"format": "convex-attention-variants/1", "model": {"temperature": NaN}}')
    with pytest.raises(VariantsError, match="strict JSON"):
        read_variants(str(path))
    with pytest.raises(VariantsError, match="does not exist"):
        read_variants(str(tmp_path / "none.json"))
    # a learned temperature cannot go with methods that cannot differentiate through it
    with pytest.raises(VariantsError, match="learn_temperature"):
        v.validate(methods=("cvxpylayers",))


def _record(c_bacc=(0.95, 0.80), variant=None, difficulty=0.3, checks=None):
    from convex_attention.paper.validity import CheckResult, check_uniform_attention

    if checks is None:
        checks = [CheckResult("location_free", "t", "bacc", 0.52, 0.60), CheckResult("pixel_map", "t", "ap", 0.2, 0.30),
                  check_uniform_attention(*c_bacc)]
    return benchmark_record(checks, variant or Variant(), difficulty, ("softmax", "exact"), (0, 1),
                            {"image_size": 64, "width": 8, "epochs": 8, "n_train": 1000})


def test_the_dev_stage_verdict_travels_in_the_variants_file(tmp_path):
    from convex_attention.paper.validity import CheckResult

    accepted, rejected, not_run = _record(), _record((0.95, 0.94)), _record((None, None))
    assert accepted["accepted"] and not rejected["accepted"] and not not_run["accepted"]
    assert rejected["checks"]["uniform_attention"]["value"] == pytest.approx(0.01)
    assert not_run["checks"]["uniform_attention"] == {"value": None, "threshold": 0.10, "passes_below": False,
                                                      "ran": False, "passed": False}
    assert accepted["judged"] == {"data": "synthetic", "variant": Variant().to_dict(), "difficulty": 0.3,
                                  "methods": ["softmax", "exact"],
                                  "dev_seeds": [0, 1],
                                  "settings": {"image_size": 64, "width": 8, "epochs": 8, "n_train": 1000}}
    # a verdict without check (c), or with a NaN number, is not an acceptance
    assert not _record(checks=[CheckResult("location_free", "t", "bacc", 0.52, 0.60)])["accepted"]
    nan = _record(checks=[CheckResult("location_free", "t", "bacc", 0.52, 0.60),
                          CheckResult("pixel_map", "t", "ap", float("nan"), 0.30),
                          CheckResult("uniform_attention", "t", "gap", 0.2, 0.10, passes_below=False)])
    assert not nan["accepted"] and nan["checks"]["pixel_map"]["value"] is None
    for record, verdict in ((accepted, "accepted"), (rejected, "rejected"), (not_run, "rejected"),
                            (None, "not recorded")):
        v = Variants(benchmark=record)
        path = tmp_path / "v.json"
        path.write_text(json.dumps(v.to_dict(), allow_nan=False))  # strict JSON: null for a check that did not run
        back = read_variants(str(path))
        assert back == v and back.verdict() == verdict
        if verdict == "accepted":
            assert check_benchmark_verdict(back) == "accepted"
            continue
        words = {"rejected": r"rejected this benchmark \(failed: uniform_attention (0\.010|did not run or is not a "
                             r"number) \(>= 0\.10\)\)", "not recorded": "records no dev-stage verdict"}[verdict]
        with pytest.raises(VariantsError, match=words + ".*--allow-rejected-benchmark"):
            check_benchmark_verdict(back)
        assert check_benchmark_verdict(back, allow_rejected=True) == verdict
    assert "benchmark" not in Variants().to_dict()  # files written before the verdict existed still load
    # the verdict holds for the data it judged only
    with pytest.raises(VariantsError, match="judged the data 'synthetic', but this run uses 'synthetic-brightest'"):
        check_benchmark_verdict(Variants(benchmark=accepted), data="synthetic-brightest")
    assert check_benchmark_verdict(Variants(benchmark=accepted), data="synthetic") == "accepted"


def test_a_hand_edited_verdict_is_refused():
    good = _record()
    c = good["checks"]["uniform_attention"]

    def edited(checks=None, **top):
        return {**good, "checks": {**good["checks"], **(checks or {})}, **top}

    for bad, words in (
            ("yes", "must be an object"), ({"accepted": True, "checks": {}}, "must be an object"),
            (edited(accepted="yes"), "must be an object"),
            (edited({"uniform_attention": {**c, "ran": 1}}), "finite number or null"),
            (edited({"uniform_attention": {**c, "threshold": "abc"}}), "finite number or null"),
            (edited({"uniform_attention": {**c, "threshold": None}}), "finite number or null"),
            (edited({"uniform_attention": {**c, "value": float("inf")}}), "finite number or null"),
            (edited({"uniform_attention": {**c, "value": 0.01}}), "says passed=True, but its number 0.01"),
            (edited({"uniform_attention": {**c, "value": 0.01, "threshold": 0.0}}), "the check's is >= 0.1"),
            (edited({"uniform_attention": {**c, "passes_below": True}}), "the check's is >= 0.1"),
            (edited({"uniform_attention": {**c, "ran": False}}), "says passed=True"),
            (edited({"colour": c}), "unknown check"),
            ({**good, "checks": {k: v for k, v in good["checks"].items() if k != "uniform_attention"}},
             r"accepted is True, but its checks say False \(missing: uniform_attention\)"),
            (edited(accepted=False), "accepted is False, but its checks say True"),
            (edited(judged={**good["judged"], "difficulty": 0.6}), "judged another variant or difficulty"),
            (edited(judged={**good["judged"], "variant": {**good["judged"]["variant"], "alpha": 1.0}}),
             "judged another variant"),
            (edited(judged={**good["judged"], "dev_seeds": [True]}), "benchmark.judged must be"),
            (edited(judged={**good["judged"], "data": "brats"}), "benchmark.judged must be"),
            ({k: v for k, v in good.items() if k != "judged"}, "must be an object")):
        with pytest.raises(VariantsError, match=words):
            Variants.from_dict(_variants_dict(benchmark=bad))
    assert Variants.from_dict(_variants_dict(benchmark=good)).verdict() == "accepted"


def test_the_repository_variants_file_is_valid():
    assert read_variants(DEFAULT_VARIANTS_PATH).validate() is not None
    assert DEFAULT_VARIANTS_PATH.endswith(os.path.join("configs", "experiment_variants.json"))


def test_variant_grid_and_what_decides_each_method():
    grid = variant_grid({"alpha": (10.0, 1.0), "head": ("bounded", "learned")})
    assert len(grid) == 4 and {v.upsampling for v in grid} == {"nearest"}
    a, b = grid[0], grid[2]  # differ in alpha only
    assert a.alpha != b.alpha and a.head == b.head
    assert a.effective("softmax") == b.effective("softmax") and a.effective("exact") == b.effective("exact")
    assert a.effective("learned_dual") != b.effective("learned_dual")
    amortised = Variant(duals="amortised")
    assert amortised.model_fields("softmax")["duals"] == "shared"
    assert amortised.model_fields("learned_dual")["duals"] == "amortised"
    with pytest.raises(ValueError, match="unknown variant field"):
        variant_grid({"depth": (2,)})


def _git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo), *args],
                          capture_output=True, text=True, check=True)


def test_the_test_stage_needs_a_committed_variants_file(tmp_path):
    repo = tmp_path / "repo"
    (repo / "configs").mkdir(parents=True)
    path = repo / "configs" / "experiment_variants.json"
    path.write_text(json.dumps(Variants().to_dict()))
    with pytest.raises(VariantsError, match="not inside a git repository"):
        commit_state(str(path))
    _git(repo, "init", "-q")
    with pytest.raises(VariantsError, match="not committed"):
        commit_state(str(path))
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "variants")
    state = commit_state(str(path))
    assert state["path_in_repository"] == os.path.join("configs", "experiment_variants.json")
    assert len(state["head"]) == 40 and state["file_commit"] == state["head"]
    path.write_text(json.dumps(Variants(note="changed after the commit").to_dict()))
    with pytest.raises(VariantsError, match="uncommitted changes"):
        commit_state(str(path))


def test_the_test_stage_refuses_before_any_work(tmp_path, monkeypatch):
    import convex_attention.paper.experiment as experiment_module
    import convex_attention.paper.train as train_module
    from convex_attention.paper.experiment import QUICK, run_experiment

    monkeypatch.setattr(train_module, "train", lambda *a, **k: pytest.fail("training started"))
    path = tmp_path / "v.json"
    path.write_text(json.dumps(Variants().to_dict()))
    with pytest.raises(VariantsError, match="not inside a git repository"):
        run_experiment(QUICK, str(tmp_path / "out"), stage="test", variants_path=str(path), progress=False)
    assert not (tmp_path / "out" / "test").exists()
    with pytest.raises(ValueError, match="stage"):
        run_experiment(QUICK, str(tmp_path / "out"), stage="final")
    # a benchmark the dev stage did not accept is refused before any work, unless allowed (pinned: no checkout here)
    class Started(Exception):
        pass

    def started(*a, **k):
        raise Started

    monkeypatch.setattr(experiment_module, "run_test", started)  # past every refusal, the stage itself begins
    for name, record, words in (("old", None, "records no dev-stage verdict"),
                                ("rejected", _record((0.9, 0.89)), "rejected this benchmark")):
        path.write_text(json.dumps(Variants(benchmark=record).to_dict()))
        pin = variants_digest(str(path))
        with pytest.raises(VariantsError, match=words):
            run_experiment(QUICK, str(tmp_path / name), stage="test", variants_path=str(path), progress=False,
                           variants_sha256=pin)
        assert not (tmp_path / name / "test").exists()
        with pytest.raises(Started):  # allowed: the test stage runs
            run_experiment(QUICK, str(tmp_path / name), stage="test", variants_path=str(path), progress=False,
                           variants_sha256=pin, allow_rejected_benchmark=True)


def test_the_test_folder_is_written_once(tmp_path):
    folder = str(tmp_path / "test")
    assert check_test_folder(folder) is False
    claim_test_folder(folder, record={"stage": "test"})
    manifest = json.load(open(os.path.join(folder, MANIFEST)))
    assert manifest == {"stage": "test", "status": "running"}
    (tmp_path / "test" / "result.csv").write_text("x")
    with pytest.raises(TestFolderExists, match="--force"):
        claim_test_folder(folder)
    finish_test_folder(folder, {"stage": "test"})
    assert json.load(open(os.path.join(folder, MANIFEST)))["status"] == "complete"
    claim_test_folder(folder, force=True)
    assert os.listdir(folder) == [MANIFEST]  # the earlier results are gone, replaced
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(TestFolderExists, match="not a test-stage result folder"):
        claim_test_folder(str(other), force=True)
    assert (other / "thesis.tex").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(TestFolderExists, match="is a file"):
        check_test_folder(str(tmp_path / "file"))


def test_the_model_free_reference_is_fitted_on_the_dev_split():
    dev = build_split(split_specs("synthetic", 0, {"dev": 24}, 0.3)["dev"], "synthetic", 32, 4)
    ref = fit_model_free(dev, seed=0)
    assert ref["name"] and len(ref["weights"]) == 4 and all(math.isfinite(w) for w in ref["weights"])
    assert 0.0 <= ref["dev_ap"] <= 1.0 and ref["check"]["name"] == "pixel_map"
    with pytest.raises(ValueError, match="at least 4"):
        fit_model_free(dev, limit=3)


# ----------------------------------------------------------------------------- sanity checks


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
    from baselines.plain_cnn import PlainCNN

    with pytest.raises(ValueError, match="attention maps"):
        map_ablation(PlainCNN(width=4, image_size=32), data, 0.5)


def test_balanced_accuracy_at_a_threshold_and_test_metrics():
    from convex_attention.paper.sanity import balanced_accuracy_at, classification

    p1, y = np.array([0.1, 0.4, 0.6, 0.9, 0.7]), np.array([0, 0, 1, 1, 0])
    assert math.isclose(balanced_accuracy_at(p1, y, 0.5), (2 / 3 + 1.0) / 2)  # class 0: 2 of 3 right; class 1: 2 of 2
    assert balanced_accuracy_at(p1, y, 0.8) == (1.0 + 0.5) / 2
    assert math.isnan(balanced_accuracy_at(p1, y, math.nan))
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


def test_randomisation_check_compares_every_explanation(monkeypatch):
    import convex_attention.paper.sanity as sanity

    model = _tiny("exact")
    images = _data(4).images[:2]
    rows = sanity.randomisation_check(model, images, seed=1)
    methods = {(r["method"], r["level"]) for r in rows}
    assert methods == {("attention", 0), ("attention", 1), ("gradcam", 0), ("gradcam", 1), ("deeplift", -1),
                       ("lrp", -1), ("input_x_gradient", -1), ("integrated_gradients", -1)}
    assert len(rows) == 2 * len(methods)
    assert all(math.isnan(r["spearman"]) or -1.0 <= r["spearman"] <= 1.0 for r in rows)
    # against the model itself every explanation correlates perfectly: the comparison pairs like with like
    monkeypatch.setattr(sanity, "randomised_copy", lambda m, seed=0: m)
    same = sanity.randomisation_check(model, images, seed=1)
    assert all(r["spearman"] == pytest.approx(1.0) or math.isnan(r["spearman"]) for r in same)
    assert sum(not math.isnan(r["spearman"]) for r in same) >= len(same) - 4  # GradCAM of an untrained model may be 0


def test_a_sha256_pin_stands_in_for_git_only_where_there_is_no_checkout(tmp_path):
    from convex_attention.paper.protocol import verify_variants

    loose = tmp_path / "copy" / "v.json"
    loose.parent.mkdir()
    loose.write_text(json.dumps(Variants().to_dict()))
    digest = variants_digest(str(loose))
    with pytest.raises(VariantsError, match="--variants-sha256"):
        verify_variants(str(loose))
    record = verify_variants(str(loose), digest.upper())
    assert record["sha256"] == digest and record["verified_by"].startswith("sha256 pin")
    with pytest.raises(VariantsError, match="not the pinned"):
        verify_variants(str(loose), "0" * 64)
    with pytest.raises(VariantsError, match="64 hexadecimal"):
        verify_variants(str(loose), "abc")
    # inside a checkout the pin does not replace the commit
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    inside = repo / "v.json"
    inside.write_text(loose.read_text())
    with pytest.raises(VariantsError, match="not committed"):
        verify_variants(str(inside), digest)
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "v")
    record = verify_variants(str(inside), digest)
    assert record["verified_by"] == "git" and record["file_commit"]
