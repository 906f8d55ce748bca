"""The experiment's protocol (splits, variants fixed in advance, a test split touched once)
and its sanity checks (map ablation, model-parameter randomisation, map statistics)."""
import json
import math
import os
import subprocess

import pytest
import torch
from helpers import read_json

from convex_attention.paper.config import QUICK, SYNTHETIC_SOURCES, ConfigError
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
    check_unspent,
    claim_test_folder,
    commit_state,
    default_ledger_path,
    finish_test_folder,
    fit_model_free,
    image_keys,
    log_test_run,
    read_ledger,
    read_variants,
    spend,
    split_seed,
    split_specs,
    variants_digest,
)

SIZES = {"train": 6, "val": 4, "dev": 4, "test": 4, "test_heldout": 4}

# ----------------------------------------------------------------------------- splits



def test_splits_are_disjoint_and_hold_one_mimic_type_out():
    specs = split_specs("synthetic", 0, SIZES, 0.4, held_out_mimic="mottled")
    check_disjoint(specs)
    keys = [set(image_keys(s)) for s in specs.values()]
    assert all(not (a & b) for i, a in enumerate(keys) for b in keys[i + 1:])
    assert len({s.seed for s in specs.values()}) == len(specs)
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
    with pytest.raises(ValueError, match="data seed must be an integer from 0 to 999"):
        split_specs("synthetic", 1000, {"train": 3}, 0.5)


def test_every_source_difficulty_split_and_data_seed_has_its_own_stream():
    """The brightest test split no longer shares its labels and heads with the rim test split,
    nor difficulty 0.3 with 0.6: every stream is its own block of generator seeds."""
    seeds = {(d, s, diff, split): split_seed(d, s, diff, split)
             for d in SYNTHETIC_SOURCES for s in (0, 1, 999) for diff in (0.0, 0.3, 0.6, 1.0)
             for split in ("train", "val", "dev", "test", "test_heldout")}
    assert len(set(seeds.values())) == len(seeds)
    assert min(seeds.values()) > 40_000 + 999  # above every seed the earlier scheme (data seed + offset) used
    assert max(seeds.values()) * 1_000_003 < 2 ** 63
    rim = build_split(split_specs("synthetic", 0, {"test": 12}, 0.3)["test"], "synthetic", 48, 4)
    bright = build_split(split_specs("synthetic-brightest", 0, {"test": 12}, 0.3)["test"], "synthetic-brightest",
                         48, 4)
    harder = build_split(split_specs("synthetic", 0, {"test": 12}, 0.6)["test"], "synthetic", 48, 4)
    assert not torch.equal(rim.labels, bright.labels) or not torch.equal(rim.labels, harder.labels)
    assert not torch.equal(rim.masks, harder.masks)  # other heads and structures, not only other contrast


def test_a_spent_data_seed_is_refused_and_the_ledger_records_runs(tmp_path):
    ledger = str(tmp_path / "data_ledger.json")
    assert read_ledger(ledger) == []
    dev = split_specs("synthetic-brightest", 0, {"train": 8, "val": 4, "dev": 4}, 0.3)
    spend(ledger, {"stage": "dev", "data": "synthetic-brightest", "data_seed": 0, "where": "x",
                   "splits": [{"name": s.name, "seed": s.seed, "n": s.n} for s in dev.values()]})
    spent = read_ledger(ledger)
    assert len(spent) == 1 and read_json(ledger)["format"] == "convex-attention-data-ledger/1"
    with pytest.raises(VariantsError, match="train split .* shares images .* recorded dev run .* --data-seed"):
        check_unspent(split_specs("synthetic-brightest", 0, {"train": 8, "test": 4}, 0.3), spent)
    check_unspent(split_specs("synthetic-brightest", 1, {"train": 8, "test": 4}, 0.3), spent)  # a fresh seed
    check_unspent(split_specs("synthetic", 0, {"train": 8, "test": 4}, 0.3), spent)  # another benchmark's stream
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(VariantsError, match="not a convex-attention-data-ledger/1 file"):
        read_ledger(str(tmp_path / "bad.json"))


def test_a_condition_is_named_by_its_difficulty_and_minus_zero_as_zero():
    from convex_attention.paper.protocol import condition_name, test_stage_specs

    assert [condition_name(d) for d in (0.3, 0.6, 1.0, 0.0, -0.0)] == [
        "difficulty0.3", "difficulty0.6", "difficulty1", "difficulty0", "difficulty0"]
    # an unvalidated config keeps -0.0: its splits are named as the validated run names its folders
    config = QUICK.override(n_train=8, n_val=4, n_dev=4, n_test=4, difficulties=(-0.0,), held_out_mimic=None)
    assert {k.split("/")[0] for k in test_stage_specs(config)} == {"difficulty0"}


def test_the_test_stage_spends_fresh_data_seeds_only(tmp_path):
    from convex_attention.paper.protocol import check_test_data, ledger_entry, ledger_where, test_stage_specs

    config = QUICK.override(data="synthetic-brightest", n_train=8, n_val=4, n_dev=4, n_test=4)
    verdict = _record(data_seed=0, data="synthetic-brightest")
    variants = Variants(difficulties=(0.3, 0.6), held_out_mimic="mottled", benchmark=verdict)
    specs = test_stage_specs(config.with_variants(variants))
    assert set(specs) == {f"difficulty{d}/{n}" for d in ("0.3", "0.6")
                          for n in ("train", "val", "dev", "test", "test_heldout")}
    ledger = str(tmp_path / "configs" / "data_ledger.json")
    where = ledger_where(str(tmp_path / "results" / "test"), ledger)
    assert where == "results/test" and ledger_where("/elsewhere/test", ledger) == "/elsewhere/test"
    # the verdict's own dev stage spent data seed 0: its train, val and dev splits
    with pytest.raises(VariantsError, match="recorded dev run .*data seed 0, the verdict"):
        check_test_data(config, variants, ledger, where)
    fresh = config.override(data_seed=1)
    assert check_test_data(fresh, variants, ledger, where) == []
    spend(ledger, ledger_entry(fresh.with_variants(variants), where, "now"))
    # a spent test seed is refused in any folder; --force into the same folder may replace that run
    for folder, force in ((where, False), ("results/other", False), ("results/other", True)):
        with pytest.raises(VariantsError, match="recorded test run .*data seed 1, results/test"):
            check_test_data(fresh, variants, ledger, folder, force)
    assert [r["where"] for r in check_test_data(fresh, variants, ledger, where, force=True)] == ["results/test"]
    # the dev stage's data seed stays refused even with --force
    with pytest.raises(VariantsError, match="dev run"):
        check_test_data(config, variants, ledger, where, force=True)
    # a verdict from before data seeds were recorded spends nothing the ledger does not hold
    old = Variants(difficulties=(0.3, 0.6), held_out_mimic="mottled", benchmark=_record(data="synthetic-brightest"))
    assert check_test_data(config, old, str(tmp_path / "none.json"), where) == []
    with pytest.raises(ConfigError, match="data seed must be from 0 to 999"):
        config.override(data_seed=1000).validate()


def test_the_repository_ledger_holds_the_runs_the_repository_records():
    spent = read_ledger(default_ledger_path(DEFAULT_VARIANTS_PATH))
    where = {run["where"] for run in spent}
    assert {"docs/results/experiment-test-cpu", "docs/results/brightest-dev5-cpu"} <= where
    rim_test = next(r for r in spent if r["where"] == "docs/results/experiment-test-cpu")
    assert rim_test["stage"] == "test" and {sp["name"] for sp in rim_test["splits"]} >= {"test", "test_heldout"}


def test_the_test_run_log_is_appended_never_rewritten(tmp_path):
    assert log_test_run(str(tmp_path), {"run": 1}) == [{"run": 1}]
    assert log_test_run(str(tmp_path), {"run": 2, "forced": True}) == [{"run": 1}, {"run": 2, "forced": True}]


def test_a_damaged_test_run_log_is_refused_naming_the_line_and_never_appended_to(tmp_path):
    from convex_attention.paper.protocol import TEST_RUN_LOG, VariantsError, read_test_runs

    assert read_test_runs(str(tmp_path)) == []
    log_test_run(str(tmp_path), {"run": 1})
    path = tmp_path / TEST_RUN_LOG
    with open(path, "a") as f:
        f.write('{"run": 2, "cut')  # a run killed while appending
    before = path.read_bytes()
    with pytest.raises(VariantsError, match=r"test_runs.jsonl, line 2, is not strict JSON .*repair or remove"):
        log_test_run(str(tmp_path), {"run": 3})
    assert path.read_bytes() == before
    path.write_text('{"run": 1, "value": Infinity}\n')
    with pytest.raises(VariantsError, match="line 1, is not strict JSON .*Infinity is not a number"):
        read_test_runs(str(tmp_path))


def test_masks_never_reach_training_or_checkpoint_selection(monkeypatch, tmp_path):
    """The dev stage hands training only the training and the label-only validation split."""
    from convex_attention.paper.experiment import QUICK, run_experiment

    seen = {}

    class Stop(Exception):
        pass

    def fake_train(config, datasets=None, log=None, model_class=None, data_split=None):
        seen["datasets"] = datasets
        raise Stop

    monkeypatch.setattr("convex_attention.paper.experiment.train", fake_train)
    monkeypatch.setattr("convex_attention.paper.experiment._validity", lambda *a: [])
    config = QUICK.override(image_size=32, width=4, n_train=8, n_val=6, n_dev=6, n_explain=1, n_sanity=1)
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


_DRIVES = (0.10, 0.12, 0.09, 0.11, 0.10)  # AUC drops per dev seed: the maps drive the ranking


def _record(drops=_DRIVES, variant=None, difficulty=0.3, checks=None, c_bacc=(0.95, 0.80), data_seed=None,
            data="synthetic"):
    from convex_attention.paper.validity import CheckResult, check_maps_drive_ranking, check_uniform_attention

    if checks is None:
        checks = [CheckResult("location_free", "t", "bacc", 0.52, 0.60), CheckResult("pixel_map", "t", "ap", 0.2, 0.30),
                  check_maps_drive_ranking(drops), check_uniform_attention(*c_bacc)]
    return benchmark_record(checks, variant or Variant(), difficulty, ("softmax", "exact"), (0, 1, 2, 3, 4),
                            {"image_size": 64, "width": 8, "epochs": 8, "n_train": 1000}, data=data,
                            data_seed=data_seed)


def test_the_dev_stage_verdict_travels_in_the_variants_file(tmp_path):
    from convex_attention.paper.validity import CheckResult

    accepted, rejected, not_run = _record(), _record((0.0, 0.01, -0.01, 0.02, 0.0)), _record(None)
    assert accepted["accepted"] and not rejected["accepted"] and not not_run["accepted"]
    assert rejected["checks"]["maps_drive_ranking"]["value"] == pytest.approx(0.004)
    assert not_run["checks"]["maps_drive_ranking"] == {"value": None, "threshold": 0.05, "passes_below": False,
                                                       "ran": False, "passed": False}
    # the accuracy gap to uniform pooling is reported and never decides
    assert _record(c_bacc=(0.95, 0.94))["accepted"] and _record(c_bacc=(None, None))["accepted"]
    assert accepted["judged"] == {"data": "synthetic", "variant": Variant().to_dict(), "difficulty": 0.3,
                                  "methods": ["softmax", "exact"], "dev_seeds": [0, 1, 2, 3, 4],
                                  "held_out_mimic": "mottled",
                                  "settings": {"image_size": 64, "width": 8, "epochs": 8, "n_train": 1000}}
    assert _record(data_seed=7)["judged"]["data_seed"] == 7
    # a verdict without check (c′), or with a NaN number, is not an acceptance
    assert not _record(checks=[CheckResult("location_free", "t", "bacc", 0.52, 0.60),
                               CheckResult("pixel_map", "t", "ap", 0.2, 0.30)])["accepted"]
    nan = _record(checks=[CheckResult("location_free", "t", "bacc", 0.52, 0.60),
                          CheckResult("pixel_map", "t", "ap", float("nan"), 0.30),
                          CheckResult("maps_drive_ranking", "t", "drop", 0.2, 0.05, passes_below=False, ci95=0.01)])
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
        words = {"rejected": r"rejected this benchmark \(failed: maps_drive_ranking (0\.004|did not run or is not a "
                             r"number) \(>= 0\.05\)\)", "not recorded": "records no dev-stage verdict"}[verdict]
        with pytest.raises(VariantsError, match=words + ".*--allow-rejected-benchmark"):
            check_benchmark_verdict(back)
        assert check_benchmark_verdict(back, allow_rejected=True) == verdict
    assert "benchmark" not in Variants().to_dict()  # files written before the verdict existed still load
    # the verdict holds for the data it judged only
    with pytest.raises(VariantsError, match="judged the data 'synthetic', but this run uses 'synthetic-brightest'"):
        check_benchmark_verdict(Variants(benchmark=accepted), data="synthetic-brightest")
    assert check_benchmark_verdict(Variants(benchmark=accepted), data="synthetic") == "accepted"


def test_a_hand_edited_verdict_is_refused():
    good = _record(data_seed=3)
    c = good["checks"]["maps_drive_ranking"]

    def edited(checks=None, **top):
        return {**good, "checks": {**good["checks"], **(checks or {})}, **top}

    for bad, words in (
            ("yes", "must be an object"), ({"accepted": True, "checks": {}}, "must be an object"),
            (edited(accepted="yes"), "must be an object"),
            (edited({"maps_drive_ranking": {**c, "ran": 1}}), "finite number or null"),
            (edited({"maps_drive_ranking": {**c, "threshold": "abc"}}), "finite number or null"),
            (edited({"maps_drive_ranking": {**c, "threshold": None}}), "finite number or null"),
            (edited({"maps_drive_ranking": {**c, "value": float("inf")}}), "finite number or null"),
            (edited({"maps_drive_ranking": {**c, "value": 0.01}}), "says passed=True, but its number 0.01"),
            # the interval must exclude 0: a wide one fails however large the mean
            (edited({"maps_drive_ranking": {**c, "ci95": 0.5}}), "says passed=True"),
            (edited({"maps_drive_ranking": {**c, "ci95": None}}), "says passed=True"),
            (edited({"maps_drive_ranking": {**c, "value": 0.01, "threshold": 0.0}}), "the check's is >= 0.05"),
            (edited({"maps_drive_ranking": {**c, "passes_below": True}}), "the check's is >= 0.05"),
            (edited({"maps_drive_ranking": {**c, "ran": False}}), "says passed=True"),
            (edited({"colour": c}), "unknown check"),
            ({**good, "checks": {k: v for k, v in good["checks"].items() if k != "maps_drive_ranking"}},
             r"accepted is True, but its checks say False \(missing: maps_drive_ranking\)"),
            (edited(accepted=False), "accepted is False, but its checks say True"),
            (edited(judged={**good["judged"], "difficulty": 0.6}), "judged another variant or difficulty"),
            (edited(judged={**good["judged"], "variant": {**good["judged"]["variant"], "alpha": 1.0}}),
             "judged another variant"),
            (edited(judged={**good["judged"], "dev_seeds": [True]}), "benchmark.judged must be"),
            (edited(judged={**good["judged"], "data": "brats"}), "benchmark.judged must be"),
            (edited(judged={**good["judged"], "data_seed": 1000}), "benchmark.judged must be"),
            (edited(judged={**good["judged"], "data_seed": "3"}), "benchmark.judged must be"),
            ({k: v for k, v in good.items() if k != "judged"}, "must be an object")):
        with pytest.raises(VariantsError, match=words):
            Variants.from_dict(_variants_dict(benchmark=bad))
    assert Variants.from_dict(_variants_dict(benchmark=good)).verdict() == "accepted"
    # the reported (c) may say anything: it never decides
    loose = edited({"uniform_attention": {**good["checks"]["uniform_attention"], "value": 0.01, "passed": False,
                                          "ci95": None}})
    assert Variants.from_dict(_variants_dict(benchmark=loose)).verdict() == "accepted"


def test_every_acceptance_rule_is_recomputed_from_the_recorded_numbers():
    """A verdict edited by hand is refused where a rule cannot be recomputed: (c′) without
    its interval (the interval test was skipped), or with fewer dev seeds than it needs
    (never counted), or dev seeds counted twice."""
    good = _record(data_seed=3)
    c = good["checks"]["maps_drive_ranking"]
    no_ci = {k: v for k, v in c.items() if k != "ci95"}
    for bad, words in (
            ({**good, "checks": {**good["checks"], "maps_drive_ranking": {**no_ci, "value": 0.06}}},
             "maps_drive_ranking ran but records no ci95"),
            ({**good, "judged": {**good["judged"], "dev_seeds": [0]}},
             r"judged 1 dev seed\(s\) \[0\]; the check needs at least 5"),
            ({**good, "judged": {**good["judged"], "dev_seeds": [0, 0, 1, 1, 2]}}, "dev_seeds.*distinct")):
        with pytest.raises(VariantsError, match=words):
            Variants.from_dict(_variants_dict(benchmark=bad))
    # the report's reproduction: no ci95, one dev seed, accepted
    edited = {**good, "checks": {**good["checks"], "maps_drive_ranking": {**no_ci, "value": 0.06}},
              "judged": {**good["judged"], "dev_seeds": [0]}}
    with pytest.raises(VariantsError):
        Variants.from_dict(_variants_dict(benchmark=edited))
    # a (c′) that did not run records no interval and may judge fewer seeds: a rejection, read back
    not_run = _record(None, data_seed=3)
    not_run = {**not_run, "judged": {**not_run["judged"], "dev_seeds": [0]}}
    assert Variants.from_dict(_variants_dict(benchmark=not_run)).verdict() == "rejected"


def test_the_repository_variants_file_is_valid():
    assert read_variants(DEFAULT_VARIANTS_PATH).validate() is not None
    assert DEFAULT_VARIANTS_PATH.endswith(os.path.join("configs", "experiment_variants.json"))


def test_variant_grid_and_what_decides_each_method():
    grid = QUICK.override(grid={"alpha": (10.0, 1.0), "head": ("bounded", "learned")}).variants()
    assert len(grid) == 4 and {v.upsampling for v in grid} == {"nearest"}
    a, b = grid[0], grid[2]  # differ in alpha only
    assert a.alpha != b.alpha and a.head == b.head
    assert a.effective("softmax") == b.effective("softmax") and a.effective("exact") == b.effective("exact")
    assert a.effective("learned_dual") != b.effective("learned_dual")
    amortised = Variant(duals="amortised")
    assert amortised.model_fields("softmax")["duals"] == "shared"
    assert amortised.model_fields("learned_dual")["duals"] == "amortised"
    with pytest.raises(ConfigError, match="unknown variant setting"):
        QUICK.override(grid={"depth": (2,)}).validate()
    with pytest.raises(TypeError, match="unknown variant setting"):
        Variant(depth=2)


def _git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo), *args],
                          capture_output=True, text=True, check=True)


def test_the_test_stage_needs_a_committed_variants_file(outside_git, tmp_path):
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


def test_a_hidden_edit_of_the_variants_file_is_not_committed(outside_git, tmp_path):
    """The file's bytes are compared with the committed blob: ``git update-index
    --assume-unchanged`` hides an edit from ``git diff``, not from the test stage."""
    from convex_attention.paper.protocol import verify_variants

    repo = tmp_path / "repo"
    repo.mkdir()
    path = repo / "experiment_variants.json"
    path.write_text(json.dumps(Variants().to_dict()))
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "variants")
    assert verify_variants(str(path))["verified_by"] == "git"
    _git(repo, "update-index", "--assume-unchanged", "experiment_variants.json")
    path.write_text(json.dumps(Variants(note="edited, hidden from git diff").to_dict()))
    assert subprocess.run(["git", "-C", str(repo), "diff", "--quiet", "HEAD"]).returncode == 0  # git diff is fooled
    with pytest.raises(VariantsError, match="uncommitted changes"):
        verify_variants(str(path))


def test_a_checkout_with_converted_line_endings_is_committed(outside_git, tmp_path):
    """Under core.autocrlf the working file has CRLF where the blob has LF: git calls it clean,
    and so does the test stage (a byte-for-byte comparison refused it)."""
    from convex_attention.paper.protocol import verify_variants

    repo = tmp_path / "repo"
    repo.mkdir()
    path = repo / "experiment_variants.json"
    _git(repo, "init", "-q")
    _git(repo, "config", "core.autocrlf", "true")
    path.write_bytes(json.dumps(Variants().to_dict(), indent=1).replace("\n", "\r\n").encode())
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "variants")
    assert b"\r\n" in path.read_bytes()
    assert subprocess.run(["git", "-C", str(repo), "diff", "--quiet", "HEAD"]).returncode == 0
    assert verify_variants(str(path))["verified_by"] == "git"


def test_the_test_stage_refuses_before_any_work(outside_git, tmp_path, monkeypatch):
    import convex_attention.paper.experiment as experiment_module
    from convex_attention.paper.experiment import QUICK, run_experiment

    monkeypatch.setattr(experiment_module, "train", lambda *a, **k: pytest.fail("training started"))
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
    judged = QUICK.override(methods=("softmax", "exact"), epochs=8, n_train=1000)  # what _record judged
    for name, record, words in (("old", None, "records no dev-stage verdict"),
                                ("rejected", _record((0.9, 0.89)), "rejected this benchmark")):
        path.write_text(json.dumps(Variants(benchmark=record).to_dict()))
        pin = variants_digest(str(path))
        with pytest.raises(VariantsError, match=words):
            run_experiment(judged, str(tmp_path / name), stage="test", variants_path=str(path), progress=False,
                           variants_sha256=pin)
        assert not (tmp_path / name / "test").exists()
        with pytest.raises(Started):  # allowed: the test stage runs
            run_experiment(judged, str(tmp_path / name), stage="test", variants_path=str(path), progress=False,
                           variants_sha256=pin, allow_rejected_benchmark=True)


def test_the_test_folder_is_written_once(tmp_path):
    folder = str(tmp_path / "test")
    assert check_test_folder(folder) is False
    claim_test_folder(folder, record={"stage": "test"})
    manifest = read_json(os.path.join(folder, MANIFEST))
    assert manifest == {"stage": "test", "status": "running"}
    (tmp_path / "test" / "result.csv").write_text("x")
    with pytest.raises(TestFolderExists, match="--force"):
        claim_test_folder(folder)
    finish_test_folder(folder, {"stage": "test"})
    assert read_json(os.path.join(folder, MANIFEST))["status"] == "complete"
    claim_test_folder(folder, force=True)
    assert os.listdir(folder) == [MANIFEST]  # a fresh folder for the new run
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(TestFolderExists, match="not a test-stage result folder"):
        claim_test_folder(str(other), force=True)
    assert (other / "thesis.tex").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(TestFolderExists, match="is a file"):
        check_test_folder(str(tmp_path / "file"))


def test_force_moves_the_earlier_results_aside_and_never_deletes_them(tmp_path):
    """``--force`` moves an earlier test folder whole (the user's files with it) to
    ``test.run-<N>``, a name never reused, even when the user removed an earlier one."""
    folder = str(tmp_path / "test")
    claim_test_folder(folder, record={"stage": "test", "started": "first"})
    (tmp_path / "test" / "my_notes.txt").write_text("my analysis")
    moved = claim_test_folder(folder, force=True, record={"stage": "test", "started": "second"})
    assert moved == str(tmp_path / "test.run-1")
    assert (tmp_path / "test.run-1" / "my_notes.txt").read_text() == "my analysis"
    assert read_json(tmp_path / "test.run-1" / MANIFEST)["started"] == "first"
    assert os.listdir(folder) == [MANIFEST]
    assert claim_test_folder(folder, force=True) == str(tmp_path / "test.run-2")
    # a name the run log records as used is never given again, though its folder is gone
    (tmp_path / "test_runs.jsonl").write_text(json.dumps({"moved_aside": {"to": "x/test.run-7"}}) + "\n")
    assert claim_test_folder(folder, force=True) == str(tmp_path / "test.run-8")
    assert sorted(os.listdir(tmp_path)) == ["test", "test.run-1", "test.run-2", "test.run-8", "test_runs.jsonl"]


@pytest.mark.slow  # fits the reference on drawn data (~0.4 s)
def test_the_model_free_reference_is_fitted_on_the_dev_split():
    dev = build_split(split_specs("synthetic", 0, {"dev": 24}, 0.3)["dev"], "synthetic", 32, 4)
    ref = fit_model_free(dev, seed=0)
    assert ref["name"] and len(ref["weights"]) == 4 and all(math.isfinite(w) for w in ref["weights"])
    assert 0.0 <= ref["dev_ap"] <= 1.0 and ref["check"]["name"] == "pixel_map"
    with pytest.raises(ValueError, match="at least 4"):
        fit_model_free(dev, limit=3)


def test_the_model_free_reference_passes_its_seed_on_and_a_check_that_did_not_run_chooses_nothing(monkeypatch):
    from convex_attention.paper import protocol
    from convex_attention.paper.validity import CheckResult

    dev = build_split(split_specs("synthetic", 0, {"dev": 8}, 0.3)["dev"], "synthetic", 32, 4)
    seen = []

    def not_run(train_images, train_masks, test_images, test_masks, seed=0, min_lesion_images=5):
        seen.append((len(train_images), len(test_images), seed))
        assert min_lesion_images == 1  # a choice of map, not a verdict
        return CheckResult("pixel_map", "t", "ap", None, 0.30, ran=False, reason="no lesion pixel")

    monkeypatch.setattr(protocol, "check_pixel_map", not_run)
    ref = fit_model_free(dev, seed=7)
    assert seen == [(4, 4, 7)]  # the two halves of the dev split, with the caller's seed
    assert ref["name"] is None and ref["weights"] is None and math.isnan(ref["dev_ap"])
    assert ref["check"]["ran"] is False and ref["check"]["reason"] == "no lesion pixel"


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


def test_the_verdicts_dev_seed_stays_spent_once_the_ledger_holds_runs(tmp_path):
    """The dev stage's data seed behind the verdict is spent together with every run the
    ledger records, not only while the ledger is empty: after a test run at data seed 1, a
    test run at the dev stage's seed 0 into another folder is still refused (found by
    mutation testing: ``others or spent_by_verdict(...)`` survived the fast suite)."""
    from convex_attention.paper.protocol import check_test_data, ledger_entry, ledger_where

    config = QUICK.override(data="synthetic-brightest", n_train=8, n_val=4, n_dev=4, n_test=4)
    variants = Variants(difficulties=(0.3,), held_out_mimic="mottled",
                        benchmark=_record(data_seed=0, data="synthetic-brightest"))
    ledger = str(tmp_path / "configs" / "data_ledger.json")
    where = ledger_where(str(tmp_path / "results" / "test"), ledger)
    fresh = config.override(data_seed=1)
    spend(ledger, ledger_entry(fresh.with_variants(variants), where, "now"))
    assert len(read_ledger(ledger)) == 1
    for force in (False, True):
        with pytest.raises(VariantsError, match="recorded dev run .*data seed 0, the verdict"):
            check_test_data(config, variants, ledger, "results/other", force)
    assert check_test_data(config.override(data_seed=2), variants, ledger, "results/other") == []


# ----------------------------------------------------------------------------- found by mutation testing


def test_a_split_reaching_the_next_seeds_images_is_refused():
    """Image ``i`` of seed ``s`` is key ``s · 1000003 + i``: a split of more than 1000003
    images would reach the next seed's images (found by mutation testing: dropping that check
    survived).  Exactly 1000003 end one key before the next seed, as the configuration allows
    (check_seed_block; refusing them here refused a test stage after its seed was spent:
    ca_rev184)."""
    stride = 1_000_003
    check_disjoint({"a": SplitSpec("a", 5, stride, 0.5), "b": SplitSpec("b", 6, 3, 0.5)})
    with pytest.raises(ValueError, match="next seed"):
        check_disjoint({"a": SplitSpec("a", 5, stride + 1, 0.5)})


def test_a_recorded_split_is_spent_up_to_its_last_image_key_only():
    """``check_unspent`` refuses a split sharing a generator key with a recorded one, and only
    then: a recorded split of 1000003 images ends just below the next seed's first key, one
    more image reaches it, and an empty one spends nothing (found by mutation testing: ``<=``
    for ``<`` in the overlap test survived)."""
    stride = 1_000_003
    spec = {"test": SplitSpec("test", 6, 4, 0.5)}

    def run(seed, n):
        return [{"stage": "dev", "splits": [{"name": "dev", "seed": seed, "n": n}]}]

    check_unspent(spec, run(5, stride))
    check_unspent(spec, run(6, 0))
    check_unspent(spec, run(7, 4))
    for seed, n in ((5, stride + 1), (6, 1), (6, 4)):
        with pytest.raises(VariantsError, match="its test split .* shares images"):
            check_unspent(spec, run(seed, n))


def test_a_data_ledger_that_is_not_one_is_refused(tmp_path):
    path = tmp_path / "data_ledger.json"
    for text, words in (('{"format": "other", "spent": []}', "not a convex-attention-data-ledger/1 file"),
                        ('{"format": "convex-attention-data-ledger/1", "spent": {}}', "not a convex-attention"),
                        ('{"format": "convex-attention-data-ledger/1", "spent": [{"splits": [{"seed": "3", "n": 4}]}]}',
                         "entry 0 must hold 'splits', each with an integer 'seed' and a number of images 'n'"),
                        ('{"format": "convex-attention-data-ledger/1", "spent": [{"splits": [{"seed": 3}]}]}',
                         "entry 0 must hold"),
                        ('{"format": "convex-attention-data-ledger/1", "spent": [{"splits": [{"seed": 3, "n": NaN}]}]}',
                         "not readable strict JSON")):
        path.write_text(text)
        with pytest.raises(VariantsError, match=words):
            read_ledger(str(path))
    with pytest.raises(VariantsError, match="not readable strict JSON"):
        spend(str(path), {"stage": "test", "splits": []})  # a damaged ledger is never rewritten
    assert "NaN" in path.read_text()


def test_the_ledger_keeps_every_run_spent(tmp_path):
    """``spend`` adds a run: the runs recorded before stay (found by mutation testing)."""
    ledger = str(tmp_path / "configs" / "data_ledger.json")
    runs = [{"stage": "dev", "where": f"run{i}", "splits": [{"name": "dev", "seed": 10 + i, "n": 4}]}
            for i in range(3)]
    for i, run in enumerate(runs):
        spend(ledger, run)
        assert read_ledger(ledger) == runs[:i + 1]


def test_force_replaces_only_test_runs_of_the_same_folder(tmp_path):
    """``--force`` allows the earlier *test* runs recorded for the folder; a dev run that
    the ledger records under the same folder name stays spent (found by mutation testing)."""
    from convex_attention.paper.protocol import check_test_data, ledger_entry

    config = QUICK.override(data="synthetic-brightest", n_train=8, n_val=4, n_dev=4, n_test=4, data_seed=1)
    variants = Variants(difficulties=(0.3,), held_out_mimic="mottled")
    ledger = str(tmp_path / "configs" / "data_ledger.json")
    entry = ledger_entry(config.with_variants(variants), "results/test", "now")
    spend(ledger, {**entry, "stage": "dev"})
    with pytest.raises(VariantsError, match="recorded dev run"):
        check_test_data(config, variants, ledger, "results/test", force=True)


def test_the_verdicts_dev_stage_spent_its_train_val_and_dev_splits():
    from convex_attention.paper.protocol import spent_by_verdict

    sizes = {"train": 8, "val": 4, "dev": 6, "test": 4, "test_heldout": 4}
    variants = Variants(difficulties=(0.3,), benchmark=_record(data_seed=2, data="synthetic-brightest"))
    (run,) = spent_by_verdict(variants, sizes, None)
    expected = split_specs("synthetic-brightest", 2, {k: sizes[k] for k in ("train", "val", "dev")}, 0.3)
    assert run["stage"] == "dev" and run["data_seed"] == 2
    assert run["splits"] == [{"name": s.name, "seed": s.seed, "n": s.n} for s in expected.values()]
    assert spent_by_verdict(Variants(benchmark=_record()), sizes, None) == []  # no data seed recorded
    assert spent_by_verdict(Variants(), sizes, None) == []


def test_the_test_run_log_refuses_a_byte_order_mark_a_non_object_and_nan(tmp_path):
    from convex_attention.paper.protocol import TEST_RUN_LOG, read_test_runs

    path = tmp_path / TEST_RUN_LOG
    for data, words in ((b'\xef\xbb\xbf{"run": 1}\n', "line 1, is not strict JSON"),
                        (b'{"run": 1}\n[1, 2]\n', "line 2, is not a JSON object"),
                        (b'{"run": 1}\n\xff\n', "is not UTF-8 text")):
        path.write_bytes(data)
        with pytest.raises(VariantsError, match=words):
            read_test_runs(str(tmp_path))
    path.write_bytes(b'{"run": 1}\n\n  \n{"run": 2}\n')  # blank lines are no runs
    assert read_test_runs(str(tmp_path)) == [{"run": 1}, {"run": 2}]
    # a record that is not strict JSON is never appended
    before = path.read_bytes()
    with pytest.raises(ValueError):
        log_test_run(str(tmp_path), {"run": 3, "value": float("nan")})
    assert path.read_bytes() == before


def test_a_results_folder_outside_the_repository_is_named_absolutely(tmp_path):
    from convex_attention.paper.protocol import ledger_where

    ledger = str(tmp_path / "repo" / "configs" / "data_ledger.json")
    assert ledger_where(str(tmp_path / "repo" / "results" / "test"), ledger) == "results/test"
    assert ledger_where(str(tmp_path / "sibling" / "test"), ledger) == str(tmp_path / "sibling" / "test")


def test_the_history_of_test_runs_follows_each_run_to_where_force_moved_it():
    """Each test run of the benchmark, in order, with where its results are kept now: a later
    ``--force`` that moved *that* run (its run id, or its start time for records written before
    run ids) moved them; one that moved another run of the same folder did not."""
    from convex_attention.paper.protocol import history_of_test_runs

    split = [{"name": "test", "seed": 1, "n": 4}]

    def run(run_id, started, data="synthetic", moved=None, **extra):
        out = {"stage": "test", "data": data, "started": started, "where": "results/test",
               "results": "results/test", "splits": split, **extra}
        if run_id:
            out["run_id"] = run_id
        return {**out, "moved_aside": moved} if moved else out

    runs = [{"stage": "dev", "data": "synthetic", "where": "results/dev", "splits": split},
            run("a", "t1"),  # its folder removed by hand: b was not forced
            run("b", "t2"),
            run(None, "t3", data="synthetic-blobs"),
            run("c", "t4", moved={"from": "results/test", "to": "results/test.run-1", "run_started": "t2",
                                  "run_id": "b"}),
            run(None, "t5", moved={"from": "results/test", "to": "results/test.run-2", "run_started": "t4"})]
    history = history_of_test_runs(runs, "synthetic")
    assert [r["started"] for r in history] == ["t1", "t2", "t4", "t5"]
    assert [r["results"] for r in history] == ["results/test", "results/test.run-1", "results/test.run-2",
                                               "results/test"]
    assert all(r["stage"] == "test" and r["data"] == "synthetic" for r in history)
    # two records without run ids started in the same second, in two folders: a move of one folder is not the other's
    old = [{"stage": "test", "data": "synthetic", "started": "t1", "where": "results/x"},
           {"stage": "test", "data": "synthetic", "started": "t1", "where": "results/y"},
           {"stage": "test", "data": "synthetic", "started": "t2", "where": "results/y",
            "moved_aside": {"from": "results/y", "to": "results/y.run-1", "run_started": "t1"}}]
    assert [r["results"] for r in history_of_test_runs(old, "synthetic")] == ["results/x", "results/y.run-1",
                                                                            "results/y"]


def test_split_seed_refuses_what_is_not_a_data_seed_and_gives_each_thousandth_its_stream():
    for bad in (True, -1, 1000, 1.0, "1"):
        with pytest.raises(ValueError, match="data seed must be an integer from 0 to 999"):
            split_seed("synthetic", bad, 0.3, "test")
    seeds = [split_seed("synthetic", s, k / 1000, split) for s in (0, 1) for k in range(1001)
             for split in ("train", "val", "dev", "test", "test_heldout")]
    assert len(set(seeds)) == len(seeds)
    # a difficulty computed in floating point is in the stream of the thousandth it names
    from convex_attention.paper.protocol import condition_name

    for computed in (0.1 + 0.2, 0.7 - 0.4):
        assert condition_name(computed) == "difficulty0.3"
        assert split_seed("synthetic", 0, computed, "test") == split_seed("synthetic", 0, 0.3, "test")
    with pytest.raises(ValueError, match="held_out_mimic must be one of"):
        split_specs("synthetic", 0, {"train": 3}, 0.5, held_out_mimic="round")


def test_the_variants_files_difficulties_and_note_are_checked():
    """1 to 4 distinct numbers in [0, 1] (booleans are not numbers); a string note; no
    unknown model field (found by mutation testing)."""
    for bad, words in (({"difficulties": []}, "difficulties must be 1 to 4"),
                       ({"difficulties": [0.1, 0.2, 0.3, 0.4, 0.5]}, "difficulties must be 1 to 4"),
                       ({"difficulties": [True]}, "difficulties must be 1 to 4"),
                       ({"difficulties": 0.3}, "'difficulties' must be a list"),
                       ({"note": 3}, "'note' must be a string"),
                       ({"model": {**Variants().to_dict()["model"], "depth": 2}},
                        r"unknown model field\(s\) \['depth'\]")):
        with pytest.raises(VariantsError, match=words):
            Variants.from_dict(_variants_dict(**bad))
    for good in ([0.0, 1.0], [0.1, 0.2, 0.3, 0.4], [0]):
        assert Variants.from_dict(_variants_dict(difficulties=good)).difficulties == tuple(good)


def test_a_hand_edited_verdicts_judged_record_is_refused():
    """``judged`` holds the settings of :data:`JUDGED_SETTINGS` (the first four at least, each
    a number), a data seed 0 .. 999 (not a boolean) and nothing else; the top level holds
    accepted, checks and judged only; (c′) that ran needs MIN_RANKING_SEEDS dev seeds."""
    from convex_attention.paper.validity import MIN_RANKING_SEEDS

    good = _record(data_seed=3)
    judged = good["judged"]
    settings = judged["settings"]
    for bad, words in (
            ({**good, "judged": {**judged, "settings": {k: v for k, v in settings.items() if k != "epochs"}}},
             "benchmark.judged must be"),
            ({**good, "judged": {**judged, "settings": {**settings, "colour": 1}}}, "benchmark.judged must be"),
            ({**good, "judged": {**judged, "settings": {**settings, "width": "8"}}}, "benchmark.judged must be"),
            ({**good, "judged": {**judged, "data_seed": True}}, "benchmark.judged must be"),
            ({**good, "judged": {**judged, "colour": 1}}, "benchmark.judged must be"),
            ({**good, "judged": {**judged, "dev_seeds": list(range(MIN_RANKING_SEEDS - 1))}},
             f"the check needs at least {MIN_RANKING_SEEDS}"),
            ({**good, "colour": 1}, "must be an object")):
        with pytest.raises(VariantsError, match=words):
            Variants.from_dict(_variants_dict(benchmark=bad))
    for seed in (0, 999):
        ok = {**good, "judged": {**judged, "data_seed": seed, "settings": {**settings, "lr": 0.001}}}
        assert Variants.from_dict(_variants_dict(benchmark=ok)).verdict() == "accepted"


def test_a_nan_interval_is_recorded_as_null_and_fails():
    from convex_attention.paper.validity import CheckResult

    checks = [CheckResult("location_free", "t", "bacc", 0.52, 0.60), CheckResult("pixel_map", "t", "ap", 0.2, 0.30),
              CheckResult("maps_drive_ranking", "t", "drop", 0.2, 0.05, passes_below=False, ci95=float("nan"))]
    record = _record(checks=checks)
    assert record["checks"]["maps_drive_ranking"]["ci95"] is None and not record["accepted"]
    json.dumps(record, allow_nan=False)
    assert Variants.from_dict(_variants_dict(benchmark=record)).verdict() == "rejected"


def test_only_an_empty_folder_or_a_test_result_is_claimed(tmp_path):
    from convex_attention.paper.protocol import move_aside, read_manifest

    empty = tmp_path / "empty"
    empty.mkdir()
    assert claim_test_folder(str(empty)) is None and os.listdir(empty) == [MANIFEST]
    # a name that only looks like one of this folder's moved-aside runs is not counted
    (tmp_path / "other.run-9").mkdir()
    (tmp_path / "empty.run-x").mkdir()
    assert claim_test_folder(str(empty), force=True) == str(tmp_path / "empty.run-1")
    # a target that appeared meanwhile is never replaced
    (tmp_path / "taken").mkdir()
    with pytest.raises(TestFolderExists, match="appeared"):
        move_aside(str(empty), str(tmp_path / "taken"))
    assert os.listdir(empty) == [MANIFEST] and os.listdir(tmp_path / "taken") == []
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / MANIFEST).write_text("[1]")
    assert read_manifest(str(tmp_path / "list")) is None and read_manifest(str(tmp_path / "none")) is None


def test_the_ledger_records_the_seed_and_size_of_every_split_a_test_run_spends():
    """The data ledger lists the splits of a run, "their generator seeds and sizes": the
    test split and the held-out one are ``n_test`` images each (found by mutation testing)."""
    from convex_attention.paper.protocol import ledger_entry

    config = QUICK.override(data="synthetic-brightest", n_train=8, n_val=5, n_dev=6, n_test=3, data_seed=1)
    config = config.with_variants(Variants(difficulties=(0.3, 0.6), held_out_mimic="mottled"))
    entry = ledger_entry(config, "results/test", "now")
    sizes = {"train": 8, "val": 5, "dev": 6, "test": 3, "test_heldout": 3}
    expected = [(f"difficulty{d}/{name}", split_seed("synthetic-brightest", 1, d, name), n, d)
                for d in (0.3, 0.6) for name, n in sizes.items()]
    assert [(sp["name"], sp["seed"], sp["n"], sp["difficulty"]) for sp in entry["splits"]] == expected
    assert entry["stage"] == "test" and entry["data_seed"] == 1 and entry["where"] == "results/test"


# ----------------------------------------------------------------------------- review 31: protocol holes


def _committed_repo(root, variants, ledger_runs=()):
    """A git repository ``root`` with ``configs/experiment_variants.json`` (``variants``) and,
    where ``ledger_runs`` are given, ``configs/data_ledger.json`` holding them, committed."""
    (root / "configs").mkdir(parents=True)
    path = root / "configs" / "experiment_variants.json"
    path.write_text(json.dumps(variants.to_dict()))
    for run in ledger_runs:
        spend(str(root / "configs" / "data_ledger.json"), run)
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "variants and ledger")
    return path


def _copy_variants(path, folder):
    """The variants file ``path`` copied, byte for byte, into ``folder`` (made; not committed):
    the copy's path."""
    folder.mkdir(parents=True)
    copy = folder / "experiment_variants.json"
    copy.write_bytes(path.read_bytes())
    return copy


def test_a_symlink_to_the_committed_variants_file_still_reads_the_repository_ledger(outside_git, tmp_path):
    from convex_attention.paper.protocol import check_test_data, ledger_entry, ledger_where, verify_variants

    config = QUICK.override(data="synthetic-brightest", n_train=8, n_val=4, n_dev=4, n_test=4, data_seed=1)
    variants = Variants(difficulties=(0.3,), held_out_mimic="mottled")
    repo = tmp_path / "repo"
    spent = ledger_entry(config.with_variants(variants), "results/test", "then")
    _committed_repo(repo, variants, [spent])
    # an untracked link inside the same checkout, to the committed file
    (repo / "alt").mkdir()
    os.symlink(os.path.join("..", "configs", "experiment_variants.json"), repo / "alt" / "experiment_variants.json")
    alt = str(repo / "alt" / "experiment_variants.json")
    record = verify_variants(alt)  # accepted as the committed file (it is)
    assert record["verified_by"] == "git" and record["path_in_repository"] == os.path.join(
        "configs", "experiment_variants.json")
    # oracle: the repository's committed ledger records a test run on data seed 1
    assert [r["data_seed"] for r in read_ledger(str(repo / "configs" / "data_ledger.json"))] == [1]
    ledger = default_ledger_path(alt)  # what the CLI preflight and run_experiment use
    with pytest.raises(VariantsError, match="reuse images"):
        check_test_data(config, read_variants(alt), ledger, ledger_where(str(repo / "results" / "b" / "test"),
                                                                          ledger))


@pytest.mark.parametrize("how", ["deleted", "entry removed"])
def test_a_spent_seed_that_the_committed_ledger_records_stays_spent(outside_git, tmp_path, how):
    from convex_attention.paper.protocol import check_test_data, ledger_entry, write_json

    config = QUICK.override(data="synthetic-brightest", n_train=8, n_val=4, n_dev=4, n_test=4, data_seed=1)
    variants = Variants(difficulties=(0.3,), held_out_mimic="mottled")
    repo = tmp_path / "repo"
    path = _committed_repo(repo, variants, [ledger_entry(config.with_variants(variants), "results/test", "then")])
    ledger = default_ledger_path(str(path))
    # oracle: git's HEAD holds the ledger that spent data seed 1
    head = json.loads(_git(repo, "show", "HEAD:configs/data_ledger.json").stdout)
    assert [r["data_seed"] for r in head["spent"]] == [1]
    if how == "deleted":
        os.remove(ledger)
    else:
        write_json(ledger, {**head, "spent": []})
    with pytest.raises(VariantsError):
        check_test_data(config, variants, ledger, "results/other")


@pytest.mark.slow  # draws every split's data (~0.6 s)
def test_a_test_split_never_shares_random_streams_with_the_verdicts_dev_stage():
    from convex_attention.paper.data.synthetic import render_rim_image
    from convex_attention.paper.protocol import check_test_data

    # the dev stage behind the verdict: data seed 0, difficulty 0.3; the test stage adds 0.101 at data seed 980
    variants = Variants(difficulties=(0.3, 0.101), held_out_mimic="mottled",
                        benchmark=_record(data_seed=0, data="synthetic"))
    config = QUICK.override(data="synthetic", n_train=2000, n_val=250, n_dev=250, n_test=500, data_seed=980)
    try:
        check_test_data(config, variants, "/nonexistent/data_ledger.json", "results/test")
        refused = False
    except VariantsError:
        refused = True
    # independent oracle: torch keeps 32 bits of a seed, so keys equal mod 2**32 give one stream
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5 + 2 ** 32)
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
    dev_val = split_seed("synthetic", 0, 0.3, "val")
    test = split_seed("synthetic", 980, 0.101, "test")
    assert (test * 1_000_003 + 291 - dev_val * 1_000_003) % 2 ** 32 == 0
    # test image 291 + j is the dev stage's validation image j, re-rendered at another difficulty:
    # 40 labels in a row agree (2**-40 by chance)
    types = tuple(t for t in ("inverted", "split", "mottled") if t != "mottled")
    shared = all(render_rim_image(dev_val, j, 32, 4, 0.3, mimic_types=types)[1]
                 == render_rim_image(test, 291 + j, 32, 4, 0.101, mimic_types=types)[1] for j in range(40))
    assert refused or not shared


def test_the_verdict_binds_the_held_out_mimic_type_its_dev_stage_kept_out():
    # what run_dev writes: benchmark_record(...) of a dev stage run with held_out_mimic "mottled"
    proposal = Variants(difficulties=(0.3,), held_out_mimic="mottled", benchmark=_record(data_seed=0))
    data = proposal.to_dict()
    # oracle: with "mottled" held out, the dev stage's train and dev splits drew "inverted" mimics
    dev = split_specs("synthetic", 0, {"train": 4, "dev": 4}, 0.3, "mottled")
    assert all("inverted" in s.mimic_types for s in dev.values())
    with pytest.raises(VariantsError, match="held_out_mimic|held-out"):
        Variants.from_dict({**data, "held_out_mimic": "inverted"})


def test_uncommitted_code_beside_the_committed_variants_file_is_refused_or_recorded(outside_git, tmp_path):
    from convex_attention.paper.protocol import verify_variants

    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "scoring.py").write_text("def score(x):\n    return x\n")
    path = _committed_repo(repo, Variants(difficulties=(0.3,)))
    (repo / "pkg" / "scoring.py").write_text("def score(x):\n    return 2 * x  # changed after the commit\n")
    assert "pkg/scoring.py" in _git(repo, "status", "--porcelain").stdout  # oracle: the tree is dirty
    try:
        record = verify_variants(str(path))
    except VariantsError:
        return  # refused: fine
    # the record, without its paths (the test's own folder name holds "uncommitted")
    text = json.dumps({k: v for k, v in record.items() if k not in ("path", "repository")}).lower()
    assert "dirty" in text or "uncommitted" in text or "modified" in text or "scoring.py" in text, record


def test_two_test_conditions_never_share_their_images():
    from convex_attention.paper.protocol import check_test_data, test_stage_specs

    config = QUICK.override(data="synthetic-brightest", n_train=8, n_val=4, n_dev=4, n_test=4, data_seed=1)
    try:
        variants = Variants.from_dict(_variants_dict(difficulties=[0.3, 0.3004]))
        check_test_data(config, variants, "/nonexistent/data_ledger.json", "results/test")
    except VariantsError:
        return  # refused: fine
    specs = test_stage_specs(config.with_variants(variants))
    # oracle: every split of one condition has the generator seed of the same split of the other
    same = [n for n in ("train", "val", "dev", "test", "test_heldout")
            if specs[f"difficulty0.3/{n}"].seed == specs[f"difficulty0.3004/{n}"].seed]
    assert not same, f"conditions 0.3 and 0.3004 share the generator seeds of {same}"


# ----------------------------------------------------------------------------- review 48: the ledger's blind spots


def test_a_committed_copy_of_the_variants_file_elsewhere_in_the_repository_still_reads_its_ledger(outside_git,
                                                                                                  tmp_path):
    from convex_attention.paper.protocol import check_test_data, ledger_entry, ledger_where, verify_variants

    config = QUICK.override(data="synthetic-brightest", n_train=8, n_val=4, n_dev=4, n_test=4, data_seed=1)
    variants = Variants(difficulties=(0.3,), held_out_mimic="mottled")
    repo = tmp_path / "repo"
    spent = ledger_entry(config.with_variants(variants), "results/test", "then")
    path = _committed_repo(repo, variants, [spent])
    # the same variants file, byte for byte, committed in another folder of the same repository
    copy = _copy_variants(path, repo / "configs" / "v2")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "a copy of the variants")
    record = verify_variants(str(copy))  # accepted: it is committed and unchanged
    assert record["verified_by"] == "git" and record["sha256"] == variants_digest(str(path))
    # oracle: the repository's ledger (working tree and HEAD) records a test run on data seed 1
    assert [r["data_seed"] for r in read_ledger(str(repo / "configs" / "data_ledger.json"))] == [1]
    assert json.loads(_git(repo, "show", "HEAD:configs/data_ledger.json").stdout)["spent"][0]["data_seed"] == 1
    ledger = default_ledger_path(str(copy))  # what the CLI preflight and run_experiment use
    with pytest.raises(VariantsError, match="reuse images"):
        check_test_data(config, read_variants(str(copy)), ledger,
                        ledger_where(str(repo / "results" / "b" / "test"), ledger))


def test_force_refuses_other_variants_that_the_folders_own_log_records(outside_git, tmp_path, monkeypatch):
    from convex_attention.paper import experiment
    from convex_attention.paper.protocol import ledger_where, record_test_run, verify_variants

    config = QUICK.override(data="synthetic-brightest", n_train=8, n_val=4, n_dev=4, n_test=4, data_seed=1)
    first = Variants(Variant(temperature=1.0), difficulties=(0.3,), held_out_mimic="mottled")
    second = Variants(Variant(temperature=0.3), difficulties=(0.3,), held_out_mimic="mottled")
    repo = tmp_path / "repo"
    path = _committed_repo(repo, first)
    (repo / "configs" / "v2").mkdir()
    other = repo / "configs" / "v2" / "experiment_variants.json"
    other.write_text(json.dumps(second.to_dict()))
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "second variants")
    # the first test run into results/test, as run_test logs it beside its folder (and its manifest)
    out = repo / "results"
    folder = str(out / "test")
    ledger = default_ledger_path(str(path))
    rec = record_test_run(config.with_variants(first), verify_variants(str(path)), "then",
                          ledger_where(folder, ledger), False)
    log_test_run(str(out), {**rec, "folder": rec["results"]})
    claim_test_folder(folder, record=rec)
    # oracle: the folder's log records a test run with the first variants file's SHA-256
    assert read_json(os.path.join(folder, MANIFEST))["variants_sha256"] == variants_digest(str(path))
    assert variants_digest(str(other)) != variants_digest(str(path))
    ran = []
    monkeypatch.setattr(experiment, "run_test", lambda *a, **k: ran.append(1) or {})
    with pytest.raises(VariantsError, match="--force|variants"):
        experiment.run_experiment(config, str(out), progress=False, log=lambda *a, **k: None, stage="test",
                                  variants_path=str(other), force=True, allow_rejected_benchmark=True)
    assert not ran


def test_the_verdicts_dev_split_is_spent_at_the_size_the_dev_stage_drew():
    from convex_attention.paper.config import IMAGES_PER_SEED as _KEY_STRIDE
    from convex_attention.paper.experiment import _judge_benchmark
    from convex_attention.paper.protocol import check_test_data
    from convex_attention.paper.validity import CheckResult, check_maps_drive_ranking, check_uniform_attention

    # the dev stage as run_dev judges it: data seed 980, difficulty 0.3, 500 development images
    dev_config = QUICK.override(data="synthetic-brightest", methods=("softmax",), n_train=8, n_val=4, n_dev=500,
                                n_test=4, data_seed=980, dev_seeds=(0, 1, 2, 3, 4), difficulties=(0.3,))
    validity = [CheckResult("location_free", "t", "bacc", 0.52, 0.60), CheckResult("pixel_map", "t", "ap", 0.2, 0.30),
                check_maps_drive_ranking(None), check_uniform_attention(None, None)]  # judged after the models
    rows = [{"method": "softmax", "seed": s, "delta_auc_shuffled": -d, "bacc": 0.9} for s, d in enumerate(_DRIVES)]
    plain = [{"seed": s, "bacc": 0.85} for s in range(5)]
    _, record = _judge_benchmark(dev_config, validity, rows, plain, Variant(), 0.3, lambda *a, **k: None)
    assert record["accepted"]
    variants = Variants(difficulties=(0.3, 0.499), held_out_mimic="mottled", benchmark=record)
    # the test stage: data seed 0, its own --n-dev 250
    config = dev_config.override(data_seed=0, n_dev=250)
    # oracle: its training split at difficulty 0.499 draws the random streams of the dev stage's
    # development images 291 .. 499 (keys congruent modulo 2**32, which torch's generator keeps)
    dev = split_seed("synthetic-brightest", 980, 0.3, "dev")
    train = split_seed("synthetic-brightest", 0, 0.499, "train")
    assert (train * _KEY_STRIDE - (dev * _KEY_STRIDE + 291)) % 2 ** 32 == 0
    with pytest.raises(VariantsError, match="reuse images"):
        check_test_data(config, variants, "/nonexistent/data_ledger.json", "results/test")


def test_the_dev_stage_refuses_splits_that_share_streams_with_a_recorded_test_split(monkeypatch, tmp_path):
    from convex_attention.paper import experiment
    from convex_attention.paper.config import IMAGES_PER_SEED as _KEY_STRIDE

    # oracle: the committed ledger records the test split of synthetic-brightest, data seed 1 (500
    # images at 0.3); a dev stage at data seed 781, difficulty 0.125 trains on its streams: training
    # image 1162 + j and test image j share a generator key modulo 2**32
    (test,) = [sp for r in read_ledger(default_ledger_path(DEFAULT_VARIANTS_PATH)) if r["stage"] == "test"
               and r["data"] == "synthetic-brightest" for sp in r["splits"] if sp["name"] == "difficulty0.3/test"][:1]
    train = split_seed("synthetic-brightest", 781, 0.125, "train")
    assert (test["seed"] * _KEY_STRIDE - (train * _KEY_STRIDE + 1162)) % 2 ** 32 == 0 and test["n"] == 500
    config = QUICK.override(data="synthetic-brightest", data_seed=781, difficulties=(0.125,), n_train=2000,
                            methods=("softmax",))

    def drawn(*a, **k):
        raise RuntimeError("the dev stage drew its splits")

    monkeypatch.setattr(experiment, "build_split", drawn)
    with pytest.raises(VariantsError, match="reuse images|test split"):
        experiment.run_experiment(config, str(tmp_path / "out"), progress=False, log=lambda *a, **k: None,
                                  stage="dev")


# ----------------------------------------------------------------------------- review 49: the repository's ledgers


def test_a_committed_ledger_in_a_folder_with_a_non_ascii_name_is_read_too(outside_git, tmp_path):
    from convex_attention.paper.protocol import check_test_data, ledger_entry, ledger_where, repository_ledgers

    config = QUICK.override(data="synthetic-brightest", n_train=8, n_val=4, n_dev=4, n_test=4, data_seed=1)
    variants = Variants(difficulties=(0.3,), held_out_mimic="mottled")
    repo = tmp_path / "repo"
    path = _committed_repo(repo, variants)  # configs/: the variants file, no ledger yet
    # a committed copy of the variants file in another folder, whose ledger records a test run on data seed 1
    other = _copy_variants(path, repo / "expériences").parent
    spend(str(other / "data_ledger.json"), ledger_entry(config.with_variants(variants), "results/test", "then"))
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "a test run from expériences/")
    # oracle: git tracks that ledger, at HEAD and in the working tree, and it records data seed 1
    tracked = _git(repo, "-c", "core.quotePath=false", "ls-files").stdout.splitlines()
    assert "expériences/data_ledger.json" in tracked
    assert [r["data_seed"] for r in read_ledger(str(other / "data_ledger.json"))] == [1]
    ledger = default_ledger_path(str(path))
    assert [r["data_seed"] for r in repository_ledgers(ledger)] == [1, 1]  # HEAD's and the working tree's
    with pytest.raises(VariantsError, match="reuse images"):
        check_test_data(config, variants, ledger, ledger_where(str(repo / "results" / "b" / "test"), ledger))


def test_a_verdict_whose_sizes_disagree_with_its_own_settings_is_refused():
    from convex_attention.paper.experiment import _judge_benchmark
    from convex_attention.paper.protocol import spent_by_verdict, split_sizes
    from convex_attention.paper.validity import CheckResult, check_maps_drive_ranking, check_uniform_attention

    dev_config = QUICK.override(data="synthetic-brightest", methods=("softmax",), n_train=2000, n_val=250,
                                n_dev=250, n_test=4, data_seed=980, dev_seeds=(0, 1, 2, 3, 4), difficulties=(0.3,))
    validity = [CheckResult("location_free", "t", "bacc", 0.52, 0.60), CheckResult("pixel_map", "t", "ap", 0.2, 0.30),
                check_maps_drive_ranking(None), check_uniform_attention(None, None)]
    rows = [{"method": "softmax", "seed": s, "delta_auc_shuffled": -d, "bacc": 0.9} for s, d in enumerate(_DRIVES)]
    plain = [{"seed": s, "bacc": 0.85} for s in range(5)]
    _, record = _judge_benchmark(dev_config, validity, rows, plain, Variant(), 0.3, lambda *a, **k: None)
    data = Variants(difficulties=(0.3,), held_out_mimic="mottled", benchmark=record).to_dict()
    # oracle: the dev stage drew the training split its settings say (2000 images), and recorded it so
    assert record["judged"]["settings"]["n_train"] == 2000 == record["judged"]["sizes"]["train"]
    assert record["judged"]["settings"]["n_val"] == 250 == record["judged"]["sizes"]["val"]
    data["benchmark"]["judged"]["sizes"]["train"] = 1  # edited by hand, every other field as written
    try:
        edited = Variants.from_dict(data)
    except VariantsError:
        return  # refused: the verdict contradicts itself
    # accepted: the test stage would spend 1 of the dev stage's 2000 training images
    (verdict,) = spent_by_verdict(edited, split_sizes(dev_config.override(data_seed=0)), "mottled")
    train = [sp["n"] for sp in verdict["splits"] if sp["name"] == "train"]
    assert train == [2000], f"the verdict's dev training split is spent at {train} images, not the 2000 it drew"


# ----------------------------------------------------------------------------- review 50 (strict xfail: known defects)


def _test_run(run_id, started, results="results/test", **extra):
    """A ledger entry of a test run as run_test spends it (one split suffices here)."""
    return {"stage": "test", "run_id": run_id, "started": started, "data": "synthetic-brightest", "data_seed": 1,
            "where": results, "results": results, "variants_sha256": "a" * 64,
            "splits": [{"name": "difficulty0.3/test", "seed": 1, "n": 1, "difficulty": 0.3}], **extra}


def test_review50_a_run_moved_by_a_run_of_another_ledger_of_the_repository_is_listed_where_it_is_now(outside_git,
                                                                                                      tmp_path):
    from convex_attention.paper.experiment import _ledger_runs
    from convex_attention.paper.protocol import history_of_test_runs

    variants = Variants(difficulties=(0.3,), held_out_mimic="mottled")
    repo = tmp_path / "repo"
    moved = {"from": "results/test", "to": "results/test.run-1", "run_started": "t1", "run_id": "r1"}
    # run 1 from configs/; run 2 from a committed copy of the variants file in alt/ (same SHA-256),
    # --force into the same folder: run 1's results went to results/test.run-1; run 3 from configs/ again
    path = _committed_repo(repo, variants, [_test_run("r1", "t1")])
    _copy_variants(path, repo / "alt")
    spend(str(repo / "alt" / "data_ledger.json"), _test_run("r2", "t2", forced=True, moved_aside=moved))
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "run 2 from alt/")
    ledger = default_ledger_path(str(path))
    spend(ledger, _test_run("r3", "t3", results="results/other"))
    runs = _ledger_runs(ledger)
    # oracle: the repository's ledgers hold all three runs, and run 2's record says where run 1's results went
    assert sorted(r["run_id"] for r in runs) == ["r1", "r2", "r3"]
    assert [r["results"] for r in history_of_test_runs(sorted(runs, key=lambda r: r["started"]),
                                                       "synthetic-brightest")] == \
        ["results/test.run-1", "results/test", "results/other"]
    where = {r["run_id"]: r["results"] for r in history_of_test_runs(runs, "synthetic-brightest")}
    assert where["r1"] == "results/test.run-1", where


def test_review50_a_ledger_written_but_not_yet_committed_beside_a_copy_of_the_variants_is_read_too(outside_git,
                                                                                                   tmp_path):
    from convex_attention.paper.protocol import check_test_data, ledger_entry, ledger_where, repository_ledgers

    config = QUICK.override(data="synthetic-brightest", n_train=8, n_val=4, n_dev=4, n_test=4, data_seed=1)
    variants = Variants(difficulties=(0.3,), held_out_mimic="mottled")
    repo = tmp_path / "repo"
    path = _committed_repo(repo, variants)  # configs/: the variants file, no ledger yet
    other = _copy_variants(path, repo / "alt").parent
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "a copy of the variants file")
    # a test run from alt/ on data seed 1: its ledger is written to the working tree, not committed
    # (docs/experiment.md: "a test run's entry is written to the working tree, not committed")
    spend(str(other / "data_ledger.json"), ledger_entry(config.with_variants(variants), "results/test", "then"))
    # oracle: the working tree of this repository holds that ledger, and it records data seed 1
    assert [r["data_seed"] for r in read_ledger(str(other / "data_ledger.json"))] == [1]
    assert "alt/data_ledger.json" in _git(repo, "status", "--porcelain", "-uall").stdout
    ledger = default_ledger_path(str(path))
    assert [r["data_seed"] for r in repository_ledgers(ledger)] == [1]
    with pytest.raises(VariantsError, match="reuse images"):
        check_test_data(config, variants, ledger, ledger_where(str(repo / "results" / "b" / "test"), ledger))


def test_ca_rev70_appending_to_a_log_whose_last_line_has_no_line_end_keeps_it_readable(tmp_path):
    from convex_attention.paper.protocol import TEST_RUN_LOG, read_test_runs

    path = tmp_path / TEST_RUN_LOG
    path.write_text('{"run": 1}')  # a valid log, saved by an editor without the final line end
    assert read_test_runs(str(tmp_path)) == [{"run": 1}]
    assert log_test_run(str(tmp_path), {"run": 2}) == [{"run": 1}, {"run": 2}]
    assert read_test_runs(str(tmp_path)) == [{"run": 1}, {"run": 2}]


def test_spending_through_a_ledger_that_is_a_link_writes_where_it_points(tmp_path):
    """A ledger shared by several checkouts through a symbolic link: write_json replaced the
    link by a regular file, so the shared ledger never learned of the run (ca_rev70's near-miss)."""
    from convex_attention.paper.protocol import read_ledger, spend

    shared = tmp_path / "shared" / "data_ledger.json"
    shared.parent.mkdir()
    link = tmp_path / "checkout" / "data_ledger.json"
    link.parent.mkdir()
    link.symlink_to(shared)
    spend(str(link), {"stage": "test", "data": "synthetic-brightest", "data_seed": 3,
                      "splits": [{"seed": 3, "n": 10}]})
    assert link.is_symlink() and [r["data_seed"] for r in read_ledger(str(shared))] == [3]


# ---- ca_rev184 (review of d302fba; its strict xfails now pass)


def test_ca_rev184_two_test_conditions_never_share_random_streams():
    """Run: check_test_data (what the preflight and run_test ask before spending) for a variants
    file with difficulties 0.1 and 0.959 and n_test 50 000 (32x32: within every bound).
    Expected: refused, as check_disjoint refuses these two splits (the test of two conditions
    sharing seeds above wants conditions disjoint), or no two of its splits share a stream.
    Observed: accepted; _splits checks each condition alone, so the stage runs with test image
    45 589 + j of difficulty 0.1 drawn from the random stream of test image j of difficulty 0.959
    (859 thousandths x 5 splits = 4295 seeds apart, 4295 x 1 000 003 = 45 589 mod 2**32); the
    held-out test sets likewise."""
    from convex_attention.paper.data.synthetic import render_rim_image
    from convex_attention.paper.protocol import check_test_data, keys_meet, test_stage_specs

    config = QUICK.override(data="synthetic", image_size=32, n_train=8, n_val=4, n_dev=4, n_test=50_000, data_seed=1)
    variants = Variants(difficulties=(0.1, 0.959), held_out_mimic="mottled")
    try:
        check_test_data(config, variants, "/nonexistent/data_ledger.json", "results/test")
    except (VariantsError, ValueError):
        return  # refused: fine
    specs = test_stage_specs(config.with_variants(variants))
    low, high = specs["difficulty0.1/test"], specs["difficulty0.959/test"]
    # oracle: keys 45 589 apart modulo 2**32, so torch draws one stream: 40 labels in a row agree
    assert (high.seed * 1_000_003 - (low.seed * 1_000_003 + 45_589)) % 2 ** 32 == 0
    types = ("inverted", "split")
    assert all(render_rim_image(low.seed, 45_589 + j, 32, 4, 0.1, mimic_types=types)[1]
               == render_rim_image(high.seed, j, 32, 4, 0.959, mimic_types=types)[1] for j in range(40))
    meet = [(a, b) for a in specs for b in specs if a < b and keys_meet(image_keys(specs[a]), image_keys(specs[b]))]
    assert not meet, f"accepted, though these splits of one test run share random streams: {meet}"


def test_ca_rev184_two_test_stages_through_two_ledgers_of_one_repository_never_both_spend_a_seed(outside_git,
                                                                                                 tmp_path,
                                                                                                 monkeypatch):
    """Run: two test stages started together on data seed 1, one through the committed
    configs/experiment_variants.json, one through its committed copy configs/v2/ (each reads
    every ledger of the repository, review 48); the window between check and spend widened.
    Expected: one runs, the other is refused (its check sees the first's entry), as for two
    runs through one ledger (ledger_lock's docstring: "two test stages started together neither
    both take one data seed").
    Observed: both start: each holds only the lock of its own ledger's folder, checks while the
    other has not spent yet, and spends into its own ledger; both reports say "the first"."""
    import threading
    import time

    from convex_attention.paper import experiment

    variants = Variants(difficulties=(0.3,), held_out_mimic="mottled")
    repo = tmp_path / "repo"
    path = _committed_repo(repo, variants)
    copy = _copy_variants(path, repo / "configs" / "v2")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "a copy of the variants")
    config = QUICK.override(data="synthetic-brightest", image_size=32, n_train=8, n_val=4, n_dev=4, n_test=4,
                            data_seed=1, methods=("softmax",))
    record = experiment.record_test_run

    def slow_record(*a, **k):  # inside the check-and-spend block: a run started beside this one gets in
        time.sleep(0.3)
        return record(*a, **k)

    started, refused = [], []

    def train(*a, **k):
        started.append(1)
        raise RuntimeError("training started")

    monkeypatch.setattr(experiment, "record_test_run", slow_record)
    monkeypatch.setattr(experiment, "train", train)

    def stage(variants_path, out):
        try:
            experiment.run_experiment(config, str(tmp_path / out), progress=False, log=lambda *a, **k: None,
                                      stage="test", variants_path=str(variants_path), allow_rejected_benchmark=True)
        except VariantsError:
            refused.append(out)
        except RuntimeError:
            pass

    threads = [threading.Thread(target=stage, args=(p, o)) for p, o in ((path, "a"), (copy, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    spent = [r["data_seed"] for ledger in (path.parent, copy.parent)
             for r in read_ledger(str(ledger / "data_ledger.json"))]
    assert len(started) == 1 and len(refused) == 1, f"started {len(started)}, refused {refused}, ledgers {spent}"


def test_overlapping_splits_of_two_conditions_are_named_by_their_conditions():
    """Two difficulties in one thousandth draw the same splits: the refusal names each split by
    its condition ('difficulty0.3/train'), not 'train' and 'train' (a review's note)."""
    from convex_attention.paper.protocol import check_test_data

    config = QUICK.override(data="synthetic", image_size=32, n_train=8, n_val=4, n_dev=4, n_test=4, data_seed=1)
    variants = Variants(difficulties=(0.3, 0.3001), held_out_mimic="mottled")
    with pytest.raises(VariantsError, match=r"'difficulty0\.3/\w+' and 'difficulty0\.3001/\w+'"):
        check_test_data(config, variants, "/nonexistent/data_ledger.json", "results/test")


# ---- run records edited by hand (ca_rev196's fix)

@pytest.mark.parametrize("field, value, words", [
    ("variants_sha256", 12345, "'variants_sha256' must be a string or null, got 12345"),
    ("run_id", ["a"], "'run_id' must be a string"),
    ("methods", "softmax", "'methods' must be a list of strings"),
    ("seeds", [0, True], "'seeds' must be a list of integers"),
    ("data_seed", 1.0, "'data_seed' must be an integer"),
    ("forced", 0, "'forced' must be true or false"),
])
def test_a_run_record_edited_by_hand_is_refused_when_read_naming_its_field(tmp_path, field, value, words):
    """A record of test_runs.jsonl or of the data ledger whose field the reports read has the wrong
    type is refused when it is read (before any work), naming the line or entry and the field."""
    from convex_attention.paper.protocol import LEDGER_FORMAT, read_test_runs

    good = {"stage": "test", "run_id": "a", "data": "synthetic", "data_seed": 1, "variants_sha256": None,
            "results": "x/old", "folder": "x/old", "seeds": [0, 1], "methods": ["exact"], "forced": False}
    assert read_test_runs(str(tmp_path)) == []
    (tmp_path / "test_runs.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, field: value}) + "\n")
    with pytest.raises(VariantsError, match=f"line 2: its {words}"):
        read_test_runs(str(tmp_path))
    entry = {**good, "where": "x/old", "splits": [{"name": "test", "seed": 5, "n": 4}]}
    ledger = tmp_path / "ledger.json"
    ledger.write_text(json.dumps({"format": LEDGER_FORMAT, "spent": [entry, {**entry, field: value}]}))
    with pytest.raises(VariantsError, match=f"entry 1: its {words}"):
        read_ledger(str(ledger))
    ledger.write_text(json.dumps({"format": LEDGER_FORMAT, "spent": [entry]}))
    assert read_ledger(str(ledger)) == [entry]


def test_the_committed_run_records_are_read_as_they_are():
    from convex_attention.paper.protocol import read_test_runs

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert len(read_test_runs(os.path.join(root, "docs", "results", "brightest-cprime-test-cpu"))) == 2
    assert len(read_ledger(os.path.join(root, "configs", "data_ledger.json"))) >= 7


# ---- ca_rev206 (mutation review of 73c68db)


def _rev206_spent_test_run(ledger, sha):
    """A test run into ``results/test`` on data seed 1, recorded in ``ledger`` with the
    variants SHA-256 ``sha`` (left out where None): the config, the variants and the entry."""
    from convex_attention.paper.protocol import ledger_entry

    config = QUICK.override(data="synthetic-brightest", n_train=8, n_val=4, n_dev=4, n_test=4, data_seed=1)
    variants = Variants(difficulties=(0.3,), held_out_mimic="mottled")
    entry = ledger_entry(config.with_variants(variants), "results/test", "then",
                         **({} if sha is None else {"variants_sha256": sha}))
    spend(ledger, entry)
    return config, variants, entry


def test_ca_rev206_force_refuses_other_variants_that_only_the_ledger_records(tmp_path):
    """Kills ``changed = [... for r in logged ...]`` (the ledger's replaced runs dropped from the
    variants comparison): a folder whose log is gone must not let ``--force`` run another
    variants file over a test split the ledger records as seen."""
    from convex_attention.paper.protocol import check_test_data

    ledger = str(tmp_path / "configs" / "data_ledger.json")
    config, variants, _ = _rev206_spent_test_run(ledger, "a" * 64)
    with pytest.raises(VariantsError, match="--force replaces an interrupted test run of the same variants only"):
        check_test_data(config, variants, ledger, "results/test", force=True, variants_sha256="b" * 64,
                        folder_runs=None)


def test_ca_rev206_force_replaces_a_recorded_run_that_names_no_variants_sha256(tmp_path):
    """Kills ``not in (variants_sha256,)`` for ``not in (None, variants_sha256)``: a run
    recorded without a variants SHA-256 (written before runs recorded it) is replaced by
    ``--force`` like one of the same file, and returned as replaced."""
    from convex_attention.paper.protocol import check_test_data

    ledger = str(tmp_path / "configs" / "data_ledger.json")
    config, variants, entry = _rev206_spent_test_run(ledger, None)
    assert "variants_sha256" not in entry  # oracle: the record names no variants file
    assert check_test_data(config, variants, ledger, "results/test", force=True, variants_sha256="b" * 64) == [entry]
    with pytest.raises(VariantsError, match="reuse images"):  # and without --force it stays spent
        check_test_data(config, variants, ledger, "results/test", variants_sha256="b" * 64)


@pytest.mark.parametrize("how", ["deleted", "entry removed"])
def test_ca_rev206_a_committed_ledger_of_another_name_still_spends_its_seed(outside_git, tmp_path, how):
    """Kills ``runs_elsewhere`` without :func:`committed_ledger` (only the repository's
    ``data_ledger.json`` files read at HEAD): a ledger given by path under another name
    (``--ledger``), committed, then deleted or emptied in the checkout, still spends its seed."""
    from convex_attention.paper.protocol import check_test_data, write_json

    repo = tmp_path / "repo"
    _committed_repo(repo, Variants(difficulties=(0.3,), held_out_mimic="mottled"))
    ledger = str(repo / "configs" / "spent.json")
    config, variants, _ = _rev206_spent_test_run(ledger, None)
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "a ledger of another name")
    # oracle: HEAD holds the ledger that spent data seed 1, under a name no other ledger has
    assert [r["data_seed"] for r in json.loads(_git(repo, "show", "HEAD:configs/spent.json").stdout)["spent"]] == [1]
    if how == "deleted":
        os.remove(ledger)
    else:
        write_json(ledger, {**json.loads(_git(repo, "show", "HEAD:configs/spent.json").stdout), "spent": []})
    with pytest.raises(VariantsError, match="reuse images"):
        check_test_data(config, variants, ledger, "results/other")


def test_ca_rev206_the_ledger_lock_holds_its_folder_outside_git(outside_git):
    """Kills :func:`ledger_lock` without the lock on the ledger's folder (only the repository's
    top folder locked, and outside git nothing): another thread's ``spend`` waits while a
    check-and-spend holds the ledger, so neither loses the other's entry."""
    import threading

    from convex_attention.paper.protocol import ledger_lock

    ledger = str(outside_git / "configs" / "data_ledger.json")
    entry = {"stage": "test", "where": "b", "splits": [{"name": "test", "seed": 5, "n": 1}]}
    other = threading.Thread(target=spend, args=(ledger, entry))
    with ledger_lock(ledger):
        other.start()
        other.join(timeout=0.3)
        waited = other.is_alive()
        mine = read_ledger(ledger)
        spend(ledger, {**entry, "where": "a"})  # the holder spends (re-entry from its own thread)
    other.join(timeout=10)
    assert waited and mine == [], "another thread spent while the ledger was held"
    assert [r["where"] for r in read_ledger(ledger)] == ["a", "b"]


def test_ca_rev206_a_verdict_whose_validation_size_disagrees_with_its_n_val_is_refused():
    """Kills the sizes-against-settings check restricted to ``train``: a verdict recording a
    validation split of 1 image while its settings judged ``n_val`` 250 contradicts itself (it
    would spend 1 of the 250 validation images it drew)."""
    from convex_attention.paper.validity import CheckResult, check_maps_drive_ranking, check_uniform_attention

    checks = [CheckResult("location_free", "t", "bacc", 0.52, 0.60), CheckResult("pixel_map", "t", "ap", 0.2, 0.30),
              check_maps_drive_ranking(_DRIVES), check_uniform_attention(0.95, 0.80)]
    settings = {"image_size": 64, "width": 8, "epochs": 8, "n_train": 1000, "n_val": 250}

    def variants(val):
        record = benchmark_record(checks, Variant(), 0.3, ("softmax",), (0, 1, 2, 3, 4), settings, data_seed=3,
                                  sizes={"train": 1000, "val": val, "dev": 40})
        return Variants(difficulties=(0.3,), benchmark=record).to_dict()

    assert Variants.from_dict(variants(250)).benchmark["judged"]["sizes"]["val"] == 250  # oracle: consistent
    with pytest.raises(VariantsError, match="sizes records val 1"):
        Variants.from_dict(variants(1))


def test_ca_rev206_a_neighbouring_folders_moved_runs_do_not_number_this_ones(tmp_path):
    """Kills ``_aside_number`` matching any name that starts with the folder's (``test2.run-5``
    counted as ``test``'s): only ``<folder>.run-<N>`` numbers the next move aside."""
    from convex_attention.paper.protocol import aside_target

    for name in ("test", "test2.run-5", "testing.run-7", "test.run-x"):
        (tmp_path / name).mkdir()
    assert aside_target(str(tmp_path / "test")) == str(tmp_path / "test.run-1")
    (tmp_path / "test.run-2").mkdir()
    assert aside_target(str(tmp_path / "test")) == str(tmp_path / "test.run-3")


def test_ca_rev206_the_dev_stage_refuses_a_test_split_that_only_the_committed_ledger_records(outside_git, tmp_path,
                                                                                            monkeypatch):
    """Kills the dev stage reading only the checkout's ledger (``read_ledger`` for
    ``_ledger_runs``): a ledger deleted in the checkout must not let the dev stage choose on
    a test run's splits that HEAD records as spent."""
    from convex_attention.paper import experiment
    from convex_attention.paper.protocol import ledger_entry

    config = QUICK.override(data="synthetic-brightest", n_train=8, n_val=4, n_dev=4, n_test=4, data_seed=1,
                            difficulties=(0.3,), methods=("softmax",))
    variants = Variants(difficulties=(0.3,), held_out_mimic="mottled")
    repo = tmp_path / "repo"
    path = _committed_repo(repo, variants, [ledger_entry(config.with_variants(variants), "results/test", "then")])
    os.remove(default_ledger_path(str(path)))
    # oracle: only HEAD records the test run on data seed 1 now
    assert [r["data_seed"] for r in json.loads(_git(repo, "show", "HEAD:configs/data_ledger.json").stdout)["spent"]] \
        == [1] and read_ledger(default_ledger_path(str(path))) == []
    monkeypatch.setattr(experiment, "run_dev", lambda *a, **k: pytest.fail("the dev stage ran"))
    with pytest.raises(VariantsError, match="reuse images"):
        experiment.run_experiment(config, str(tmp_path / "out"), progress=False, log=lambda *a, **k: None,
                                  stage="dev", variants_path=str(path))


def test_ca_rev206_a_pinned_link_outside_the_repository_reads_the_ledger_beside_the_committed_file(outside_git,
                                                                                                  tmp_path,
                                                                                                  monkeypatch):
    """Kills :func:`default_ledger_path` without ``realpath`` (the ledger beside the link): a
    link outside the checkout to the committed variants file, accepted by its SHA-256 pin,
    must still read the repository's ledger, which spent the data seed."""
    from convex_attention.paper import experiment
    from convex_attention.paper.protocol import ledger_entry

    config = QUICK.override(data="synthetic-brightest", n_train=8, n_val=4, n_dev=4, n_test=4, data_seed=1)
    variants = Variants(difficulties=(0.3,), held_out_mimic="mottled")
    repo = tmp_path / "repo"
    path = _committed_repo(repo, variants, [ledger_entry(config.with_variants(variants), "results/test", "then")])
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "elsewhere" / "experiment_variants.json"
    os.symlink(path, link)
    monkeypatch.setattr(experiment, "run_test", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(VariantsError, match="reuse images"):
        experiment.run_experiment(config, str(tmp_path / "elsewhere" / "out"), progress=False,
                                  log=lambda *a, **k: None, stage="test", variants_path=str(link),
                                  variants_sha256=variants_digest(str(path)), allow_rejected_benchmark=True)
    assert not (tmp_path / "elsewhere" / "data_ledger.json").exists()


def test_ca_rev206_the_variants_record_names_each_uncommitted_file(outside_git, tmp_path):
    """Kills ``uncommitted_changes`` always empty: the earlier test's oracle matched the key's
    own name ("uncommitted"), so it passed on an empty list; the record must name the file."""
    from convex_attention.paper.protocol import verify_variants

    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "scoring.py").write_text("def score(x):\n    return x\n")
    path = _committed_repo(repo, Variants(difficulties=(0.3,)))
    assert verify_variants(str(path))["uncommitted_changes"] == []  # oracle: a clean tree names nothing
    (repo / "pkg" / "scoring.py").write_text("def score(x):\n    return 2 * x\n")
    assert verify_variants(str(path))["uncommitted_changes"] == ["pkg/scoring.py"]


@pytest.mark.parametrize("split", [{"name": "test", "seed": 5, "n": 0}, {"name": "test", "seed": 5, "n": -3},
                                   {"name": "test", "seed": True, "n": 4}, {"name": "test", "seed": 5, "n": True}])
def test_a_ledger_split_of_no_images_or_of_bools_is_refused(tmp_path, split):
    """ca_rev206's near-miss: a hand-edited split of n <= 0 images overlapped nothing, so the entry spent
    nothing; bools had read as integers."""
    from convex_attention.paper.protocol import LEDGER_FORMAT

    ledger = tmp_path / "ledger.json"
    entry = {"stage": "test", "data": "synthetic", "data_seed": 1, "where": "x", "splits": [split]}
    ledger.write_text(json.dumps({"format": LEDGER_FORMAT, "spent": [entry]}))
    with pytest.raises(VariantsError, match="entry 0 must hold 'splits'.*at least 1"):
        read_ledger(str(ledger))


# ---- ca_rev257 (cross-version reproducibility probe)

# The first two images (image, label, mask bytes) of the committed synthetic-brightest test run's splits
# (data seed 1, difficulty 0.3, 64², held-out type mottled; configs/data_ledger.json), found the same bit for bit on
# torch 2.7.1, 2.13.0 and 2.15.0 (numpy 2.4.6 / 2.5.5) by the review: a torch whose generator stream or kernels
# change the synthetic images fails here, before a ledger's recorded split silently names other images.
_CA_REV257_SPLIT_DIGESTS = {
    "train": (1091590, "a5ac760f9096089e2c4247166d9aba1215f4d74659fd9971b74315f3bddab52a"),
    "test": (1091593, "d83d9dbf2d1cd910828573e6fb763738d8374a6b1fd91f6ceb563876271bdd53"),
    "test_heldout": (1091594, "858e3b249134bafce987ea9cfeaa6e10cdd3e1b3114d112374f906e3c196735f"),
}


def test_ca_rev257_the_committed_test_splits_images_are_pinned_bit_for_bit():
    import hashlib

    import numpy as np

    from convex_attention.paper import protocol as P

    sizes = {name: 2 for name in _CA_REV257_SPLIT_DIGESTS}
    specs = P.split_specs("synthetic-brightest", 1, sizes, 0.3, held_out_mimic="mottled")
    for name, (seed, digest) in _CA_REV257_SPLIT_DIGESTS.items():
        assert specs[name].seed == seed
        ds = P.build_split(specs[name], "synthetic-brightest", 64, 4, in_memory=False)
        h = hashlib.sha256()
        for i in range(2):
            image, label, mask = ds[i]
            h.update(image.numpy().tobytes())
            h.update(np.int64(label).tobytes())
            h.update(mask.numpy().tobytes())
        assert h.hexdigest() == digest, f"{name}: the synthetic images changed (torch {torch.__version__})"


# ---- ca_rev266 (hostile review of settings and config)

@pytest.mark.parametrize("where", ["difficulties", "judged", "value", "threshold", "ci95", "settings"])
def test_ca_rev266_a_huge_integer_in_the_variants_file_is_a_variants_error(tmp_path, where):
    """A 400-digit integer (strict JSON reads it) where the file holds a number raised OverflowError from
    math.isfinite: a traceback from `experiment --stage test`, not the usage error naming the file."""
    data = read_json(DEFAULT_VARIANTS_PATH)
    big = "BIG"
    bench = data["benchmark"]
    if where == "difficulties":
        data["difficulties"] = [big]
    elif where == "judged":
        bench["judged"]["difficulty"] = big
    elif where == "settings":
        bench["judged"]["settings"]["epochs"] = big
    elif where == "ci95":
        bench["checks"]["maps_drive_ranking"]["ci95"] = big
    else:
        bench["checks"]["pixel_map"][where] = big
    path = tmp_path / "variants.json"
    path.write_text(json.dumps(data).replace('"BIG"', "1" + "0" * 400), encoding="utf-8")
    with pytest.raises(VariantsError):
        read_variants(str(path))
