import json
import math
import os
import subprocess

import pytest
import torch
from helpers import read_bytes, read_csv_rows, read_json, read_text, run_cli

from convex_attention import cli
from convex_attention.paper.experiment import (
    FULL,
    QUICK,
    ExperimentConfig,
    run_experiment,
)
from convex_attention.paper.explain import mean_ci
from convex_attention.paper.models import (
    AttentionUNet,
    ConfigError,
    ModelConfig,
    load_model,
    save_checkpoint,
)
from convex_attention.paper.protocol import (
    JUDGED_SETTINGS,
    MANIFEST,
    SplitSpec,
    TestFolderExists,
    Variant,
    Variants,
    VariantsError,
    benchmark_record,
    judged_settings,
    read_ledger,
    read_test_runs,
    variants_digest,
)

SMALL = dict(width=4, image_size=32, embed_channels=8)


run = run_cli  # (argv, capsys) -> (exit code, stdout, stderr)


# ----------------------------------------------------------------------------- model variants


@pytest.mark.parametrize("fields,name,words", [
    ({"head": "wide"}, "head", "head must be one of bounded, learned"),
    ({"learn_temperature": "yes"}, "learn_temperature", "True or False"),
    ({"learn_temperature": True, "method": "cvxpylayers"}, "learn_temperature", "cannot differentiate"),
    ({"duals": "fitted"}, "duals", "duals must be one of shared, amortised"),
    ({"duals": "amortised", "method": "exact"}, "duals", "methods that need duals"),
])
def test_variant_fields_are_validated(fields, name, words):
    with pytest.raises(ConfigError, match=words) as err:
        ModelConfig(**fields).validate()
    assert err.value.field == name
    with pytest.raises(ValueError, match=words):
        AttentionUNet(**SMALL, **fields)


def test_the_learned_head_and_the_learned_temperature():
    torch.manual_seed(0)
    model = AttentionUNet(method="exact", head="learned", learn_temperature=True, temperature=(1.0, 2.0), **SMALL)
    assert all(head.scale == "learned" for head in model.heads.values())
    assert torch.allclose(model.temperatures(), torch.tensor([1.0, 2.0]))
    images = torch.randn(2, 4, 32, 32)
    out = model(images)
    model.loss(out, torch.tensor([0, 1])).backward()
    assert model.log_temperature.grad is not None and model.log_temperature.grad != 0
    assert all(h.log_gain.grad is not None for h in model.heads.values())
    assert model.attention.temperature == [1.0, 2.0]  # restored: no graph kept between passes
    model.eval()
    with torch.no_grad():
        before = model(images).maps[0]
        model.log_temperature.fill_(-2.0)  # a colder layer: sharper maps
        assert torch.allclose(model.temperatures(), torch.tensor([1.0, 2.0]) * torch.exp(torch.tensor(-2.0)))
        after = model(images).maps[0]
        model.log_temperature.fill_(50.0)  # bounded: e^7 at most
        assert torch.allclose(model.temperatures(), torch.tensor([1.0, 2.0]) * torch.exp(torch.tensor(7.0)))
    assert after.flatten(1).max(1).values.min() > before.flatten(1).max(1).values.max()
    fixed = AttentionUNet(method="exact", **SMALL)
    assert fixed.log_temperature is None and all(h.scale == "bounded" for h in fixed.heads.values())


def test_the_dual_source_of_learned_dual():
    from convex_attention.nn import AmortisedDuals, LearnedDuals

    amortised = AttentionUNet(method="learned_dual", duals="amortised", learn_temperature=True, **SMALL)
    assert isinstance(amortised.attention.learned_duals, AmortisedDuals)
    assert isinstance(AttentionUNet(method="learned_dual", **SMALL).attention.learned_duals, LearnedDuals)
    # untrained, its duals start at the optimum, where the consistency loss and its gradient are 0
    # (since the loss takes the scores' maxima off first, exactly): moved off it, they get one
    with torch.no_grad():
        for p in amortised.attention.learned_duals.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    out = amortised(torch.randn(2, 4, 32, 32))
    out.aux_loss.backward()
    assert amortised.log_temperature.grad is not None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in amortised.attention.learned_duals.parameters())


def test_old_checkpoints_load_with_the_old_defaults(tmp_path):
    from convex_attention.paper.train import TrainConfig

    path = str(tmp_path / "old.pt")
    torch.manual_seed(0)
    model = AttentionUNet(method="learned_dual", **SMALL)
    config = TrainConfig.build(method="learned_dual", **SMALL)
    save_checkpoint(path, model, extra={"train_config": config.to_dict()})
    state = torch.load(path, weights_only=True)
    for key in ("head", "learn_temperature", "duals"):  # a checkpoint from before these fields existed
        del state["config"][key]
        del state["train_config"]["model"][key]
    torch.save(state, path)
    loaded, state = load_model(path)
    assert loaded.config.head == "bounded" and loaded.config.learn_temperature is False
    assert loaded.config.duals == "shared"
    x = torch.randn(2, 4, 32, 32)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)
    new = AttentionUNet(method="learned_dual", head="learned", learn_temperature=True, duals="amortised", **SMALL)
    save_checkpoint(str(tmp_path / "new.pt"), new)
    again, _ = load_model(str(tmp_path / "new.pt"))
    assert again.config == new.config and "log_temperature" in again.state_dict()
    with pytest.raises(ValueError, match="another architecture"):
        from convex_attention.paper.models import load_checkpoint

        load_checkpoint(str(tmp_path / "new.pt"), AttentionUNet(method="learned_dual", **SMALL))


# ----------------------------------------------------------------------------- the plain CNN


@pytest.mark.slow  # trains two models (~0.5 s)
def test_the_plain_cnn_is_the_encoder_with_uniform_pooling_and_trains_by_the_same_loop(tmp_path):
    from convex_attention.paper.data import InMemory
    from convex_attention.paper.data.synthetic import SyntheticRimLesions
    from convex_attention.paper.models import PlainCNN, is_plain_cnn_checkpoint, load_any_model, read_checkpoint
    from convex_attention.paper.train import TrainConfig, train

    torch.manual_seed(0)
    plain = PlainCNN(**SMALL)
    assert not plain.has_attention and not any(n.startswith("heads") for n, _ in plain.named_parameters())
    out = plain(torch.randn(3, 4, 32, 32))
    assert out.logits.shape == (3, 2) and [tuple(m.shape) for m in out.maps] == [(3, 8, 8), (3, 4, 4)]
    assert float(out.solution.violation.max()) < 1e-6 and float(out.aux_loss) == 0.0
    data = (InMemory(SyntheticRimLesions(16, image_size=32, seed=0)), InMemory(SyntheticRimLesions(8, image_size=32,
                                                                                                   seed=1)))
    config = TrainConfig.build(out=str(tmp_path / "plain"), epochs=1, batch_size=8, device="cpu", progress=False,
                               method="softmax", **SMALL)
    result = train(config, datasets=data, model_class=PlainCNN)
    assert is_plain_cnn_checkpoint(read_checkpoint(result["best"]))
    model, _ = load_any_model(result["best"])
    assert isinstance(model, PlainCNN)
    # no attention, so no consistency to report: NaN (an empty cell), never a perfect 0
    assert all(math.isnan(m["val_violation"]) for m in result["metrics"])
    assert {row["val_violation"] for row in read_csv_rows(tmp_path / "plain" / "metrics.csv")} == {""}
    attention = save_checkpoint(str(tmp_path / "att.pt"), AttentionUNet(method="exact", **SMALL))
    assert isinstance(load_any_model(attention)[0], AttentionUNet)


# ----------------------------------------------------------------------------- the configuration


def test_presets_and_new_fields():
    assert len(FULL.seeds) >= 5 and len(FULL.variants()) == 8 and FULL.baseline_model == "all"
    assert len(QUICK.variants()) == 1 and QUICK.plain_cnn
    for field, value, words in (("difficulties", (0.5, 0.5), "distinct"), ("difficulties", (), "difficulties"),
                                ("held_out_mimic", "round", "held_out_mimic"), ("n_sanity", 0, "n_sanity"),
                                ("grid", {"upsampling": ("cubic",)}, "grid_upsampling"),
                                ("grid", {"head": ()}, "grid_head"),
                                ("dev_seeds", (1, 1), "twice"), ("data", "brats", "synthetic"),
                                ("baseline_model", "plain_cnn", None)):
        if words is None:
            QUICK.override(**{field: value}).validate()
            continue
        with pytest.raises(ConfigError, match=words):
            QUICK.override(**{field: value}).validate()
    with pytest.raises(ConfigError, match="grid_learn_temperature") as err:
        QUICK.override(methods=("cvxpylayers",), grid={"learn_temperature": (True,)}).validate()
    assert err.value.field == "grid_learn_temperature"
    with pytest.raises(ConfigError, match="held_out_mimic"):
        QUICK.override(data="synthetic-blobs").validate()
    QUICK.override(data="synthetic-blobs", held_out_mimic=None).validate()


def test_the_test_stage_takes_its_variant_from_the_file():
    v = Variants(Variant(temperature=0.3, head="learned", upsampling="bilinear"), (0.1, 0.9), "split")
    c = FULL.with_variants(v).validate()
    assert c.difficulties == (0.1, 0.9) and c.held_out_mimic == "split"
    assert c.candidates()["upsampling"] == ("bilinear",)
    assert c.variants() == [Variant(temperature=0.3, head="learned", upsampling="bilinear")]
    assert c.train.model.temperature == (0.3,) and c.upsampling == "bilinear"
    assert ExperimentConfig().to_dict()["grid"] == {"upsampling": ["nearest", "bilinear"]}


def test_experiment_command_rejects_bad_sizes(capsys):
    try:
        code = cli.main(["experiment", "--quick", "--image-size", "40", "--out", "/tmp/never"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2 and "pooling stack" in capsys.readouterr().err


def test_experiment_options_reach_the_configuration():
    from convex_attention.cli.paper import experiment_config_from_args

    parser = cli.build_parser()
    args = parser.parse_args(["experiment", "--quick", "--grid-learn-temperature", "off", "on", "--grid-head",
                              "bounded", "learned", "--held-out-mimic", "none", "--difficulties", "0.2", "0.5",
                              "--n-dev", "40", "--dev-seeds", "3"])
    c = experiment_config_from_args(args)
    assert c.grid["learn_temperature"] == (False, True) and c.grid["head"] == ("bounded", "learned")
    assert c.held_out_mimic is None and c.difficulties == (0.2, 0.5) and c.n_dev == 40 and c.dev_seeds == (3,)


def test_test_stage_refusals_are_usage_errors_before_work(outside_git, tmp_path, capsys, monkeypatch):
    import convex_attention.paper.experiment as experiment

    monkeypatch.setattr(experiment, "run_experiment", lambda *a, **k: pytest.fail("work started"))
    from convex_attention.paper.validity import check_uniform_attention

    out = str(tmp_path / "exp")
    loose = tmp_path / "v.json"
    loose.write_text(json.dumps(Variants().to_dict()))
    rejected = tmp_path / "rejected.json"
    record = benchmark_record([check_uniform_attention(0.9, 0.89)], Variant(), 0.3, ("softmax",), (0,),
                              {"image_size": 64, "width": 8, "epochs": 4, "n_train": 512})
    rejected.write_text(json.dumps(Variants(benchmark=record).to_dict()))
    pinned = ["--variants-sha256", variants_digest(str(rejected))]  # tmp_path is no git checkout: a pin stands in
    for argv, words in ((["--variants", str(loose)], "--variants"), (["--grid-head", "learned"], "--grid-head"),
                        (["--variants", str(rejected), *pinned],
                         "rejected this benchmark (failed: location_free missing"),
                        (["--variants", str(loose), "--variants-sha256", variants_digest(str(loose))],
                         "records no dev-stage verdict"),
                        (["--difficulties", "0.4"], "--difficulties"),
                        (["--variants", str(tmp_path / "none.json")], "does not exist")):
        code, _, err = run(["experiment", "--quick", "--stage", "test", *argv, "--out", out], capsys)
        assert code == 2 and words in err and "Traceback" not in err, err
        assert not os.path.exists(out)
    # an accepted verdict whose dev stage spent data seed 0: the test stage needs a fresh --data-seed
    from convex_attention.paper.validity import CheckResult, check_maps_drive_ranking

    good = benchmark_record([CheckResult("location_free", "t", "b", 0.5, 0.6),
                             CheckResult("pixel_map", "t", "a", 0.2, 0.3), check_maps_drive_ranking([0.1] * 5)],
                            Variant(), 0.3, ("softmax",), (0, 1, 2, 3, 4),
                            {"image_size": 64, "width": 8, "epochs": 4, "n_train": 512}, data_seed=0)
    accepted = tmp_path / "accepted.json"
    accepted.write_text(json.dumps(Variants(benchmark=good).to_dict()))
    argv = ["experiment", "--quick", "--stage", "test", "--variants", str(accepted), "--variants-sha256",
            variants_digest(str(accepted)), "--methods", "softmax", "--out", out]
    code, _, err = run(argv, capsys)
    assert code == 2 and "argument --data-seed:" in err and "would reuse images" in err and "dev run" in err, err
    code, _, err = run([*argv, "--data-seed", "1000"], capsys)
    assert code == 2 and "--data-seed" in err and "0 to 999" in err, err
    assert not os.path.exists(out)
    monkeypatch.setattr(experiment, "run_experiment", lambda *a, **k: {"report": "ran"})
    code, output, err = run([*argv, "--data-seed", "1"], capsys)  # a fresh seed passes the door
    assert code == 0 and "ran" in output, err
    # a run log the stage cannot read back (before: a traceback after the data seed was spent)
    monkeypatch.setattr(experiment, "run_experiment", lambda *a, **k: pytest.fail("work started"))
    for content, words in ((b'{"run": 1}\n{"run": 2, "fol', "line 2, is not strict JSON"),
                           (b"\xef\xbb\xbf{}\n", "line 1, is not strict JSON"), (b'{"a": NaN}\n', "NaN"),
                           (b"\xff\x00\n", "is not UTF-8 text"), (b"[1]\n", "not a JSON object")):
        with open(os.path.join(out, "test_runs.jsonl"), "wb") as f:
            f.write(content)
        code, _, err = run([*argv, "--data-seed", "1"], capsys)
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "argument --out:" in err and "test_runs.jsonl" in err and words in err, err
    os.remove(os.path.join(out, "test_runs.jsonl"))
    out = str(tmp_path / "exp2")
    code, _, err = run(["experiment", "--quick", "--force", "--out", out], capsys)
    assert code == 2 and "--force" in err
    code, _, err = run(["experiment", "--quick", "--allow-rejected-benchmark", "--out", out], capsys)
    assert code == 2 and "--allow-rejected-benchmark: only the test stage" in err


def _accepting_checks():
    """Validity checks (a), (b) and (c) that a benchmark record accepts."""
    from convex_attention.paper.validity import CheckResult, check_maps_drive_ranking

    return [CheckResult("location_free", "t", "b", 0.5, 0.6), CheckResult("pixel_map", "t", "a", 0.2, 0.3),
            check_maps_drive_ranking([0.1] * 5)]


def test_the_test_stage_refuses_other_methods_or_settings_than_the_verdict_judged(outside_git, tmp_path, capsys,
                                                                                  monkeypatch):
    """The verdict records the methods and the settings it judged; the test stage refuses,
    before any work (one line, exit 2, naming the setting and both values), a run that
    differs from them (it used to check only the variant, the difficulty and the data)."""
    import convex_attention.paper.experiment as experiment

    monkeypatch.setattr(experiment, "run_test", lambda *a, **k: pytest.fail("work started"))
    checks = _accepting_checks()
    dev = QUICK.override(methods=("softmax", "exact"), n_train=64, epochs=2)
    record = benchmark_record(checks, Variant(), 0.3, dev.methods, (0, 1, 2, 3, 4), judged_settings(dev),
                              data_seed=0)
    assert set(record["judged"]["settings"]) == set(JUDGED_SETTINGS)  # the dev stage records every one
    path = tmp_path / "accepted.json"
    path.write_text(json.dumps(Variants(benchmark=record).to_dict()))
    base = ["experiment", "--stage", "test", "--variants", str(path), "--variants-sha256",
            variants_digest(str(path)), "--data-seed", "1", "--out", str(tmp_path / "exp")]
    same = ["--quick", "--methods", "softmax", "exact", "--n-train", "64", "--epochs", "2"]
    for argv, words in (
            (["--quick", "--n-train", "64", "--epochs", "2"], "judged the methods softmax exact, but this run has "
                                                              "softmax learned_dual exact"),
            (["--quick", "--methods", "softmax", "--n-train", "64", "--epochs", "2"], "judged the methods"),
            ([*same[:-4], "--n-train", "96", "--epochs", "2"], "judged n_train 64, but this run has n_train 96"),
            ([*same[:-2], "--epochs", "3"], "judged epochs 2, but this run has epochs 3"),
            ([*same, "--batch-size", "16"], "judged batch_size 32, but this run has batch_size 16"),
            ([*same, "--n-val", "64"], "judged n_val 128, but this run has n_val 64"),
            # the full preset against a quick verdict: its first differing setting is named
            (same[1:], "judged image_size 64, but this run has image_size 128")):
        code, _, err = run([*base, *argv], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert "argument --variants:" in err and words in err, err
        assert not (tmp_path / "exp").exists()
    monkeypatch.setattr(experiment, "run_test", lambda *a, **k: {"report": "ran"})
    code, output, err = run([*base, *same, "--seeds", "7", "8"], capsys)  # new training seeds are the test's own
    assert code == 0 and "ran" in output, err
    # the learning rate has no option: --quick's differs from the full preset's, and the API refuses it too
    full = FULL.override(methods=("softmax", "exact"))
    full_record = benchmark_record(checks, Variant(), 0.3, full.methods, (0, 1, 2, 3, 4), judged_settings(full),
                                   data_seed=0)
    path.write_text(json.dumps(Variants(benchmark=full_record).to_dict()))
    quick = QUICK.override(methods=("softmax", "exact"), image_size=full.train.model.image_size,
                           width=full.train.model.width, epochs=full.train.epochs, n_train=full.train.n_train,
                           n_val=full.train.n_val, data_seed=1)
    with pytest.raises(VariantsError, match="judged lr 0.002, but this run has lr 0.003"):
        run_experiment(quick, str(tmp_path / "exp"), stage="test", variants_path=str(path), progress=False,
                       variants_sha256=variants_digest(str(path)))
    assert not (tmp_path / "exp" / "test").exists() and not (tmp_path / "data_ledger.json").exists()


def test_force_keeps_the_earlier_test_run_and_the_ledger_lists_every_run(tmp_path, monkeypatch):
    """``--force`` moves the earlier results aside (the user's files with them) before any
    work; the ledger and ``test_runs.jsonl`` record each run's seeds, methods, settings and
    where its results are; the report of a later run into another folder lists every
    earlier test run of the benchmark, with where its results are now."""
    import convex_attention.paper.experiment as experiment
    from convex_attention.paper.experiment import run_test

    histories = []
    monkeypatch.setattr(experiment, "_test_condition", lambda *a, **k: None)  # no training: the bookkeeping only
    monkeypatch.setattr(experiment, "_write_test", lambda config, *a: histories.append(a[-1]) or {"report": ""})
    ledger = str(tmp_path / "configs" / "data_ledger.json")
    record = {"path": str(tmp_path / "configs" / "experiment_variants.json"), "sha256": "ab" * 32}
    variants = Variants(difficulties=(0.3,))

    def test_stage(config, out, **kw):
        return run_test(config, str(tmp_path / out / "test"), variants, record, progress=False,
                        log=lambda *a: None, ledger_path=ledger, **kw)

    first = _tiny_config(data_seed=1)
    test_stage(first, "exp1")
    (tmp_path / "exp1" / "test" / "my_notes.txt").write_text("my analysis")
    test_stage(first.override(seeds=(3, 4), methods=("softmax",)), "exp1", force=True)
    assert (tmp_path / "exp1" / "test.run-1" / "my_notes.txt").read_text() == "my analysis"
    assert not (tmp_path / "exp1" / "test" / "my_notes.txt").exists()
    test_stage(first.override(data_seed=2), "exp3")
    runs = read_ledger(ledger)
    assert [(r["data_seed"], r["seeds"], r["methods"], r["results"]) for r in runs] == [
        (1, [0, 1], ["softmax", "learned_dual", "exact"], "exp1/test"), (1, [3, 4], ["softmax"], "exp1/test"),
        (2, [0, 1], ["softmax", "learned_dual", "exact"], "exp3/test")]
    assert runs[1]["moved_aside"] == {"from": "exp1/test", "to": "exp1/test.run-1", "run_started": runs[0]["started"],
                                      "run_id": runs[0]["run_id"]}
    assert len({r["run_id"] for r in runs}) == 3  # runs started within one second are told apart by their id
    assert runs[0]["settings"]["n_train"] == 32 and runs[0]["settings"]["lr"] == first.train.lr
    assert runs[0]["settings"]["n_explain"] == 2 and runs[0]["variants_sha256"] == "ab" * 32
    logged = read_test_runs(str(tmp_path / "exp1"))
    assert [(r["seeds"], r["results"]) for r in logged] == [([0, 1], "exp1/test"), ([3, 4], "exp1/test")]
    from convex_attention.paper.reports import history_line

    line = history_line(histories[-1], "synthetic")
    assert "This is test run 3 of the benchmark 'synthetic' recorded in the data ledger" in line, line
    assert "results in `exp1/test.run-1`" in line and "results in `exp1/test`" in line, line
    assert "seeds [3, 4], methods softmax, forced" in line and "first test run" not in line, line
    forced = history_line(histories[1], "synthetic")
    assert "moved, not deleted, to `exp1/test.run-1`" in forced and "test run 2" in forced, forced


def test_force_moves_nothing_when_the_run_cannot_be_recorded(tmp_path, monkeypatch):
    """The ledger and the folder log are written before the earlier results move: a run whose
    record cannot be written (here the ledger) leaves them where they were (before, they were
    moved first and the move was recorded nowhere)."""
    import convex_attention.paper.experiment as experiment
    from convex_attention.paper.experiment import run_test

    monkeypatch.setattr(experiment, "_test_condition", lambda *a, **k: None)
    monkeypatch.setattr(experiment, "_write_test", lambda config, *a: {"report": ""})
    ledger = str(tmp_path / "configs" / "data_ledger.json")
    record = {"path": str(tmp_path / "configs" / "experiment_variants.json"), "sha256": "ab" * 32}
    folder = str(tmp_path / "exp1" / "test")
    run_test(_tiny_config(data_seed=1), folder, Variants(difficulties=(0.3,)), record, progress=False,
             log=lambda *a: None, ledger_path=ledger)
    (tmp_path / "exp1" / "test" / "my_notes.txt").write_text("my analysis")

    def unwritable(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(experiment, "spend", unwritable)
    with pytest.raises(OSError):
        run_test(_tiny_config(data_seed=1), folder, Variants(difficulties=(0.3,)), record, progress=False,
                 log=lambda *a: None, ledger_path=ledger, force=True)
    assert (tmp_path / "exp1" / "test" / "my_notes.txt").read_text() == "my analysis"
    assert not (tmp_path / "exp1" / "test.run-1").exists()


def test_the_experiment_refuses_a_validation_split_without_both_classes(tmp_path, monkeypatch):
    """Its models are trained on plain tuples, which skipped the class check that train's own
    data path runs: --n-val 1 ran with val AUC empty and best.pt picked on nothing."""
    import convex_attention.paper.experiment as experiment
    from convex_attention.paper.experiment import run_experiment
    from convex_attention.paper.train import ValidationClassesError

    monkeypatch.setattr(experiment, "train", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValidationClassesError, match="holds no image of class"):
        run_experiment(_tiny_config(n_val=1), str(tmp_path / "exp"), stage="dev", progress=False)


def test_check_c_is_reported_with_a_paired_interval():
    from convex_attention.paper.experiment import _uniform_check

    c = _uniform_check({"softmax": {0: 0.9, 1: 0.8}, "exact": {0: 0.95, 1: 0.93}}, {0: 0.80, 1: 0.82}, "dev")
    assert c.ran and c.value == pytest.approx(0.94 - 0.81)  # the best method's mean against the plain mean
    # the interval is of the per-seed gaps (0.15, 0.11), paired by seed: t(0.975, 1) * 0.0283 / sqrt(2)
    assert c.ci95 == pytest.approx(12.706 * 0.028284 / math.sqrt(2), rel=1e-3) and "exact" in c.note
    assert not c.passed  # its interval includes 0; it is reported, never a gate
    assert "per-seed gap 0.130 ± " in c.note  # attention minus plain, as the value (found by mutation testing)
    off = _uniform_check({"softmax": {0: 0.9}}, {}, "dev")
    assert not off.ran and not off.passed and "plain_cnn off" in off.reason
    for attention, plain in (({"softmax": {0: 0.9, 1: math.nan}, "exact": {0: 0.95}}, {0: 0.5}),
                             ({"softmax": {0: 0.9}}, {0: math.nan}), ({"softmax": {}}, {0: 0.5})):
        nan = _uniform_check(attention, plain, "the development split")  # judged as not run, never a crash
        assert not nan.ran and not nan.passed and "not finite (or missing) on the development split" in nan.reason


def test_check_c_prime_from_the_softmax_models():
    from convex_attention.paper.experiment import _ranking_check

    rows = [{"method": "softmax", "seed": s, "upsampling": "nearest", "delta_auc_shuffled": -d}
            for s, d in enumerate((0.10, 0.12, 0.09, 0.11, 0.10))]
    others = [{**r, "method": "exact", "delta_auc_shuffled": 0.0} for r in rows]  # methods on trial do not count
    accepted = _ranking_check(rows + others)
    assert accepted.passed and accepted.value == pytest.approx(0.104) and accepted.detail["drops"][1] == 0.12
    flat = _ranking_check([{**r, "delta_auc_shuffled": -0.002} for r in rows])
    assert flat.ran and not flat.passed
    noisy = _ranking_check([{**r, "delta_auc_shuffled": d} for r, d in zip(rows, (-0.3, 0.2, -0.3, 0.2, -0.1))])
    assert noisy.ran and not noisy.passed  # a mean drop of 0.06 whose interval includes 0
    few = _ranking_check(rows[:4])
    assert not few.ran and "at least 5 dev seeds" in few.reason
    none = _ranking_check(others)
    assert not none.ran and "softmax" in none.reason


def test_compared_methods_need_dev_auc():
    from convex_attention.paper.experiment import compared_methods

    rows = [{"method": "softmax", "auc": 0.9}, {"method": "softmax", "auc": 0.8}, {"method": "exact", "auc": 0.82},
            {"method": "exact", "auc": 0.76}, {"method": "learned_dual", "auc": math.nan}]
    assert compared_methods(rows, ("softmax", "exact", "learned_dual", "plain_cnn")) == ["softmax"]


def _group_mean(model, method, level, seed, ap):
    """One seed's mean ap of a map group of condition "c" (pixel, nearest, decisive masks)."""
    return {"condition": "c", "test_set": "test", "model": model, "method": method, "level": level,
            "resolution": "pixel", "upsampling": "nearest", "mask": "decisive", "seed": seed, "ap_mean": ap, "ap": ap}


def test_the_headline_pairs_attention_and_post_hoc_by_seed_among_compared_models():
    from convex_attention.paper.experiment import _headline, _summary

    seed_means = []
    for seed, shift in enumerate((0.0, 0.02, -0.01)):
        seed_means += [_group_mean("exact", "attention", 0, seed, 0.30 + shift),
                       _group_mean("exact", "attention", 1, seed, 0.50 + shift),
                       _group_mean("exact", "gradcam", 0, seed, 0.40 + 2 * shift),
                       _group_mean("softmax", "integrated_gradients", -1, seed, 0.45),
                       _group_mean("learned_dual", "attention", 1, seed, 0.90),  # not compared: never the best
                       _group_mean("reference", "block_map", 0, seed, 0.95)]
    summary = _summary(seed_means, ("condition", "test_set", "model", "method", "level", "resolution", "upsampling",
                                    "mask"), ("ap",))
    [h] = _headline(summary, seed_means, {"c": ["exact", "softmax"]})
    assert (h["attention"]["model"], h["attention"]["level"]) == ("exact", 1)
    assert (h["posthoc"]["model"], h["posthoc"]["method"]) == ("softmax", "integrated_gradients")
    assert h["block_map"]["ap_mean"] == pytest.approx(0.95)
    # per seed 0.05, 0.07, 0.04: paired, so the interval is that of these three differences
    assert h["difference"]["ap_mean"] == pytest.approx(0.05 + 1 / 300) and h["difference"]["seeds"] == 3
    assert h["difference"]["seeds_nan"] == 0 and h["by_model"]["exact"]["seeds_nan"] == 0
    assert (summary[0]["ap_n_used"], summary[0]["ap_n_nan"]) == (3, 0)
    assert h["difference"]["ap_ci95"] == pytest.approx(mean_ci([0.05, 0.07, 0.04])[1])
    assert set(h["by_model"]) == {"exact"} and h["by_model"]["exact"]["level"] == 1


def test_the_randomisation_summary_counts_the_constant_maps_it_leaves_out():
    """A constant map has no rank correlation (NaN): it is left out of its seed's mean, a
    seed whose every image is NaN is left out of the mean over seeds, and both are counted,
    so the interval's degrees of freedom are those of the seeds used."""
    from scipy.stats import t

    from convex_attention.paper.experiment import _RANDOMISATION_KEYS, _grouped, _seed_mean, _summary

    nan = math.nan
    per_seed = {0: [0.9, nan, nan, nan], 1: [0.5, 0.7, nan, nan], 2: [0.2, 0.4, 0.6, nan], 3: [0.1, 0.1, 0.1, 0.1],
                4: [nan, nan, nan, nan]}  # seed 4: every re-initialised map constant
    rows = [dict(condition="c", test_set="test", model="m", method="gradcam", level=0, stage_index=0,
                 stage="classifier", seed=seed, image=i, spearman_abs=v, spearman_signed=0.5)
            for seed, values in per_seed.items() for i, v in enumerate(values)]
    seeds = [{**_seed_mean(rs, "spearman_abs"), **_seed_mean(rs, "spearman_signed")}
             for rs in _grouped(rows, _RANDOMISATION_KEYS + ("seed",))]
    assert [(r["spearman_abs_n_used"], r["spearman_abs_n_nan"]) for r in seeds] == [(1, 3), (2, 2), (3, 1), (4, 0),
                                                                                    (0, 4)]
    assert math.isnan(seeds[4]["spearman_abs"]) and seeds[1]["spearman_abs"] == pytest.approx(0.6)
    (s,) = _summary(seeds, _RANDOMISATION_KEYS, ("spearman_abs", "spearman_signed"))
    assert s["seeds"] == 5
    assert (s["spearman_abs_n_used"], s["spearman_abs_n_nan"]) == (4, 1)
    assert (s["spearman_abs_images_used"], s["spearman_abs_images_nan"]) == (10, 10)
    assert (s["spearman_signed_n_used"], s["spearman_signed_n_nan"], s["spearman_signed_images_nan"]) == (5, 0, 0)
    means = [0.9, 0.6, 0.4, 0.1]
    assert s["spearman_abs_mean"] == pytest.approx(sum(means) / 4)
    spread = (sum((x - sum(means) / 4) ** 2 for x in means) / 3) ** 0.5
    assert s["spearman_abs_ci95"] == pytest.approx(t.ppf(0.975, 3) * spread / 2)  # 4 seeds used: 3 degrees of freedom


def test_the_dev_summaries_count_what_they_leave_out():
    from convex_attention.paper.experiment import _dev_levels

    nan = math.nan
    rows = [{"method": "softmax", "seed": seed, "attention_ap_lesion": ap, "ap_lesion_L0": ap,
             "delta_auc_shuffled": d, "delta_auc_uniform": -0.01, "delta_auc_shuffled_L0": d,
             "delta_auc_uniform_L0": -0.01} for seed, ap, d in ((0, 0.4, -0.2), (1, 0.5, nan), (2, 0.6, -0.1))]
    levels = _dev_levels(QUICK.override(methods=("softmax",)), rows, {"lesion": [0]})
    for e in levels:
        assert e["seeds"] == 3 and (e["ap_lesion_n_used"], e["ap_lesion_n_nan"]) == (3, 0)
        assert (e["delta_auc_shuffled_n_used"], e["delta_auc_shuffled_n_nan"]) == (2, 1)
        assert e["delta_auc_shuffled_mean"] == pytest.approx(-0.15)


# ----------------------------------------------------------------------------- end to end


def _tiny_config(**over):
    return QUICK.override(**{**dict(seeds=(0, 1), image_size=32, width=4, embed_channels=8, n_train=32, n_val=16,
                                    n_dev=16, n_test=16, epochs=1, n_explain=2, n_sanity=2, batch_size=8,
                                    validity_images=16, dev_seeds=(0,)), **over})


def _commit(repo, source):
    (repo / "configs").mkdir(parents=True)
    target = repo / "configs" / "experiment_variants.json"
    target.write_bytes(read_bytes(source))
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "variants"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo), *args], check=True)
    return str(target)


@pytest.mark.slow
def test_tiny_experiment_end_to_end(tmp_path):
    out = str(tmp_path / "exp")
    config = _tiny_config(data="synthetic-brightest", held_out_mimic="mottled",
                          grid={"head": ("bounded", "learned"), "upsampling": ("nearest", "bilinear")})
    dev = run_experiment(config, out, progress=False, log=lambda *a: None)
    summary = read_csv_rows(os.path.join(out, "dev", "dev_summary.csv"))
    assert len(summary) == 4  # 2 heads x 2 upsamplings, best first
    finite = [float(s["attention_ap_mean"]) for s in summary if s["attention_ap_mean"] != ""]
    assert summary[0]["attention_ap_mean"] == "" or float(summary[0]["attention_ap_mean"]) >= max(finite)
    proposal = read_json(os.path.join(out, "dev", "proposed_variants.json"))
    assert proposal["format"] == "convex-attention-variants/1"
    assert dev["proposal"].variant.head in ("bounded", "learned")
    assert "Validity checks" in dev["report"] and "decisive" in dev["report"]
    runs = os.listdir(os.path.join(out, "dev", "runs"))
    assert len(runs) == 7  # 3 methods x 2 heads x 1 seed (upsampling needs no training), and the plain CNN
    dev_rows = read_csv_rows(os.path.join(out, "dev", "dev_runs.csv"))
    # AP per level and per mask, and the ablation per level, for every model
    for r in (r for r in dev_rows if r["method"] != "plain_cnn"):
        for key in ("ap_lesion_L0", "ap_lesion_L1", "ap_decisive_L0", "ap_decisive_L1", "delta_auc_shuffled",
                    "delta_auc_shuffled_L0", "delta_auc_uniform_L1", "attention_ap_decisive"):
            assert r[key] != "", key
        assert float(r["attention_ap"]) == pytest.approx(float(r["attention_ap_decisive"]))  # chosen on decisive
    levels = read_csv_rows(os.path.join(out, "dev", "dev_levels.csv"))
    assert {(e["method"], e["level"]) for e in levels} == {(m, k) for m in config.methods for k in ("0", "1", "all")}
    # (c′) needs 5 dev seeds: with one it did not run, so the benchmark is rejected; (c) ran and is reported
    checks = {r.name: r for r in dev["validity"]}
    assert not checks["maps_drive_ranking"].ran and "at least 5 dev seeds" in checks["maps_drive_ranking"].reason
    c = checks["uniform_attention"]
    plain = [r for r in dev_rows if r["method"] == "plain_cnn"]
    assert c.ran and len(plain) == 1
    best = dev["summary"][0]
    assert c.value == pytest.approx(max(best[f"{m}_bacc_mean"] for m in config.methods) - float(plain[0]["bacc"]))
    verdict = proposal["benchmark"]
    assert not verdict["accepted"] and verdict["checks"]["maps_drive_ranking"]["ran"] is False
    assert verdict["checks"]["uniform_attention"]["value"] == pytest.approx(c.value)
    assert verdict["judged"]["variant"] == proposal["model"] | {"upsampling": proposal["upsampling"]}
    assert {k: verdict["judged"]["settings"][k] for k in ("image_size", "width", "epochs", "n_train", "n_val",
                                                          "batch_size", "lr")} == {
        "image_size": 32, "width": 4, "epochs": 1, "n_train": 32, "n_val": 16, "batch_size": 8, "lr": config.train.lr}
    assert verdict["judged"]["data"] == "synthetic-brightest" and verdict["judged"]["dev_seeds"] == [0]
    assert verdict["judged"]["data_seed"] == 0
    assert "Benchmark REJECTED" in dev["report"]
    variants = _commit(tmp_path / "repo", os.path.join(out, "dev", "proposed_variants.json"))

    def test_stage(cfg, **kw):
        return run_experiment(cfg, out, progress=False, log=lambda *a: None, stage="test", variants_path=variants,
                              **kw)

    with pytest.raises(VariantsError, match="--allow-rejected-benchmark"):  # refused before any work
        test_stage(config)
    # the dev stage's data seed is spent: the test stage refuses it before any work
    with pytest.raises(VariantsError, match="would reuse images.*data seed 0.*--data-seed"):
        test_stage(config, allow_rejected_benchmark=True)
    assert not os.path.exists(os.path.join(out, "test"))
    fresh = config.override(data_seed=1)
    result = test_stage(fresh, allow_rejected_benchmark=True)
    assert "REJECTED this benchmark" in result["report"]
    assert "first test run of the benchmark 'synthetic-brightest' recorded in the data ledger" in result["report"]
    assert "The verdict judged data 'synthetic-brightest' (data seed 0)" in result["report"]
    assert "n_train 32" in result["report"] and "The best of each side is picked on the test split" in result["report"]
    ledger = read_json(os.path.join(os.path.dirname(variants), "data_ledger.json"))
    assert [(r["stage"], r["data_seed"]) for r in ledger["spent"]] == [("test", 1)]
    folder = os.path.join(out, "test")
    runs = read_csv_rows(os.path.join(folder, "runs.csv"))
    # 2 difficulties x 2 test sets x 4 models x 2 seeds
    assert len(runs) == 2 * 2 * 4 * 2 and {r["model"] for r in runs} == {"softmax", "learned_dual", "exact",
                                                                          "plain_cnn"}
    assert {r["test_set"] for r in runs} == {"test", "heldout_mottled"}
    for r in runs:
        assert 0 <= float(r["bacc"]) <= 1 and r["dev_auc"] != ""
        if r["model"] == "exact":
            assert float(r["violation"]) <= 1e-5
        if r["model"] != "plain_cnn":
            assert r["delta_auc_shuffled"] != "" and r["delta_auc_shuffled_L1"] != "" and r["n_max_p_L0"] != ""
        else:
            assert r["violation"] == ""  # no maps to be consistent
    # the map ablation summarises attention models only: the plain CNN has no maps to ablate
    ablated = read_csv_rows(os.path.join(folder, "ablation_summary.csv"))
    assert {r["model"] for r in ablated} == {"softmax", "learned_dual", "exact"}
    assert len(ablated) == 2 * 2 * 3 and all(r["delta_auc_shuffled_n_used"] == "2" for r in ablated)
    explained = read_csv_rows(os.path.join(folder, "explain_summary.csv"))
    kinds = {(e["model"], e["method"], e["mask"]) for e in explained}
    for model in ("softmax", "learned_dual", "exact", "plain_cnn"):
        for method in ("gradcam", "deeplift", "lrp", "input_x_gradient", "integrated_gradients"):
            assert (model, method, "lesion") in kinds and (model, method, "decisive") in kinds
    assert ("reference", "block_map", "decisive") in kinds and ("reference", "model_free", "lesion") in kinds
    assert {e["resolution"] for e in explained} == {"pixel", "8x8", "4x4"}
    assert all(e["seeds"] == "2" for e in explained)
    # every mean says how many values it used and left out (seeds; images behind the per-seed means)
    assert all((e["ap_n_used"], e["ap_n_nan"], e["ap_images_nan"]) == ("2", "0", "0") for e in explained)
    per_seed = read_csv_rows(os.path.join(folder, "explain_per_seed.csv"))
    assert all(int(r["ap_n_used"]) + int(r["ap_n_nan"]) == int(r["n"]) for r in per_seed)
    rand = read_csv_rows(os.path.join(folder, "randomisation_summary.csv"))
    assert {(r["model"], r["method"]) for r in rand} >= {("exact", "attention"), ("plain_cnn", "lrp")}
    assert [r["stage"] for r in rand if (r["model"], r["method"], r["level"]) == ("exact", "attention", "0")][:2] \
        == ["classifier", "attention"]
    for r in rand:  # images: 2 per seed, 2 seeds
        assert int(r["spearman_abs_images_used"]) + int(r["spearman_abs_images_nan"]) == 4
        assert int(r["spearman_abs_n_used"]) + int(r["spearman_abs_n_nan"]) == 2
    report = result["report"]
    order = [report.index(h) for h in ("## Validity checks", "## Compared models", "## Headline",
                                       "## Attention against post-hoc maps, per level", "## Accuracy",
                                       "## Explanation metrics", "## Sanity checks")]
    assert order == sorted(order)
    for words in ("first 2 images", "95 % confidence interval", "qiou_strict@0.95", "pointing_tol",
                  "2.0 px", "heldout_mottled", "Δ AUC shuffled", "Spearman, abs maps", "Spearman, signed maps",
                  "decisive masks", "FEWER", "data seed 1", "Left out as NaN or infinite (randomisation check)",
                  "Left out as NaN or infinite (explanation metrics)"):
        assert words in report, words
    saved = json.loads(read_text(os.path.join(folder, "experiment.json")))  # strict JSON
    assert saved["variants_file"]["sha256"] and saved["variants_file"]["file_commit"]
    # every pair of the 4 models, AUC and bacc, per condition and test set, paired over the 2 seeds
    differences = read_csv_rows(os.path.join(folder, "accuracy_differences.csv"))
    assert len(differences) == 2 * 2 * 6 * 2 == len(saved["accuracy_differences"])
    assert all(d["seeds"] == "2" for d in differences)
    assert "## Accuracy differences, paired by seed" in report
    assert read_json(os.path.join(folder, "test_stage.json"))["status"] == "complete"
    assert os.path.exists(os.path.join(folder, "explain_examples_difficulty0.3.png"))
    assert os.path.exists(os.path.join(folder, "explain_ap_lesion.png"))
    assert os.path.exists(os.path.join(folder, "explain_ap_decisive.png"))

    with pytest.raises(TestFolderExists, match="--force"):
        test_stage(fresh, allow_rejected_benchmark=True)
    # another folder may not spend the same data seed again; --force into the same folder may, and says so
    with pytest.raises(VariantsError, match="would reuse images.*test run"):
        run_experiment(fresh, str(tmp_path / "other"), progress=False, log=lambda *a: None, stage="test",
                       variants_path=variants, allow_rejected_benchmark=True)
    with pytest.raises(VariantsError, match="judged epochs 1, but this run has epochs 2"):  # the judged setting
        test_stage(fresh.override(epochs=2), allow_rejected_benchmark=True, force=True)
    again = test_stage(fresh, allow_rejected_benchmark=True, force=True)
    assert "test run 2 of the benchmark" in again["report"] and "--force" in again["report"]
    assert "moved, not deleted" in again["report"] and os.path.isfile(os.path.join(out, "test.run-1", "runs.csv"))
    assert len(read_text(os.path.join(out, "test_runs.jsonl")).splitlines()) == 2
    _assert_every_file_is_one_the_command_cleans(out)


def _assert_every_file_is_one_the_command_cleans(out):
    """The command's list of what the experiment writes (for removing a killed run's
    temporaries) is kept by hand beside experiment.py: every file a run leaves is in it."""
    import re

    from convex_attention.cli.paper import EXPERIMENT_FILES, EXPERIMENT_NAMED
    from convex_attention.paper.protocol import TEST_RUN_LOG

    not_written_through_a_temporary = {TEST_RUN_LOG, "results.lock"}  # an appended log; the command's lock
    unlisted = sorted(
        os.path.relpath(os.path.join(root, name), out) for root, _, names in os.walk(out) for name in names
        if name not in EXPERIMENT_FILES and name not in not_written_through_a_temporary
        and not any(re.fullmatch(pattern, name) for pattern in EXPERIMENT_NAMED))
    assert unlisted == []


def test_the_experiment_never_scores_a_model_whose_outputs_are_not_finite():
    """The experiment's own evaluation and dev-stage scoring (not only the command's
    handler) refuse a model whose logits overflow, rather than report its numbers."""
    from convex_attention.paper.data import SyntheticLesions
    from convex_attention.paper.experiment import _dev_ap, _evaluate
    from convex_attention.paper.models import AttentionUNet, NonFiniteOutput

    model = AttentionUNet(method="exact", width=4, image_size=32, embed_channels=8)
    with torch.no_grad():
        model.classifier.weight.fill_(3e38)
        model.classifier.bias.fill_(torch.finfo(torch.float32).max)
    data = SyntheticLesions(8, image_size=32, seed=0, lesion_fraction=0.7)
    with pytest.raises(NonFiniteOutput, match="logits"):
        _evaluate(model, data, 0.5, "cpu", ablation=True, seed=0)
    lesions = [i for i in range(len(data)) if int(data[i][1]) == 1][:2]
    with pytest.raises(NonFiniteOutput, match="logits"):
        _dev_ap(QUICK, model, data, {"lesion": lesions}, ("nearest",), "cpu")


# ----------------------------------------------------------------------------- found by mutation testing


def _judged_variants(config, passing: bool | None):
    """A variants file's content whose verdict judged ``config`` (None: no verdict recorded)."""
    from convex_attention.paper.validity import CheckResult, check_maps_drive_ranking

    if passing is None:
        return Variants(difficulties=(0.3,))
    checks = [CheckResult("location_free", "t", "b", 0.5 if passing else 0.9, 0.6),
              CheckResult("pixel_map", "t", "a", 0.2, 0.3), check_maps_drive_ranking([0.1] * 5)]
    record = benchmark_record(checks, Variant(), 0.3, config.methods, (0, 1, 2, 3, 4), judged_settings(config))
    return Variants(difficulties=(0.3,), benchmark=record)


@pytest.mark.parametrize("passing,words", [(False, "rejected this benchmark"), (None, "records no dev-stage verdict")])
def test_run_experiment_refuses_a_rejected_or_unrecorded_verdict_before_any_work(outside_git, monkeypatch, passing,
                                                                                 words):
    """The API's test stage, not only the command line, refuses a benchmark the dev stage did
    not accept unless told, before anything is spent (found by mutation testing: reading
    ``variants.verdict()`` without the check survived the fast suite)."""
    import convex_attention.paper.experiment as experiment

    monkeypatch.setattr(experiment, "run_test", lambda *a, **k: pytest.fail("work started"))
    config = _tiny_config(methods=("softmax",))
    path = outside_git / "variants.json"
    path.write_text(json.dumps(_judged_variants(config, passing).to_dict()))
    with pytest.raises(VariantsError, match=f"{words}.*--allow-rejected-benchmark"):
        run_experiment(config, str(outside_git / "exp"), stage="test", variants_path=str(path), progress=False,
                       log=lambda *a: None, variants_sha256=variants_digest(str(path)))
    assert not (outside_git / "exp").exists() and not (outside_git / "data_ledger.json").exists()


def test_run_test_itself_refuses_methods_or_settings_the_verdict_did_not_judge(tmp_path, monkeypatch):
    """``run_test`` checks the judged protocol itself (callers other than ``run_experiment``),
    before the ledger, the run log or any training (found by mutation testing: deleting its
    ``check_judged`` survived the fast suite)."""
    import convex_attention.paper.experiment as experiment
    from convex_attention.paper.experiment import run_test

    monkeypatch.setattr(experiment, "_test_condition", lambda *a, **k: pytest.fail("work started"))
    monkeypatch.setattr(experiment, "_write_test", lambda *a, **k: pytest.fail("work started"))
    ledger = tmp_path / "configs" / "data_ledger.json"
    record = {"path": str(tmp_path / "configs" / "experiment_variants.json"), "sha256": "ab" * 32}
    judged = _tiny_config(methods=("softmax", "exact"), data_seed=1)
    variants = _judged_variants(judged, True)
    for config, words in ((judged.override(methods=("softmax",)), "judged the methods softmax exact"),
                          (judged.override(epochs=2), "judged epochs 1, but this run has epochs 2")):
        with pytest.raises(VariantsError, match=words):
            run_test(config, str(tmp_path / "exp" / "test"), variants, record, progress=False, log=lambda *a: None,
                     ledger_path=str(ledger))
    assert not ledger.exists() and not (tmp_path / "exp").exists()


def test_the_paired_difference_pairs_the_same_seed():
    """A constant per-seed difference over seeds whose values vary has an interval of
    about 0; pairing other seeds would widen it (found by mutation testing)."""
    from convex_attention.paper.experiment import _paired_difference

    xs = (0.30, 0.55, 0.42, 0.71, 0.20)
    seed_means = [_group_mean("exact", "attention", 0, s, x) for s, x in enumerate(xs)]
    seed_means += [_group_mean("exact", "gradcam", 0, s, x - 0.05) for s, x in enumerate(xs)]
    mean, half, n, n_nan = _paired_difference(seed_means, seed_means[0], seed_means[-1])
    assert mean == pytest.approx(0.05) and half == pytest.approx(0.0, abs=1e-12) and (n, n_nan) == (5, 0)


def test_the_paired_difference_counts_a_seed_left_out_as_nan():
    """A seed whose mean is NaN on one side is paired, left out of the mean and counted
    (found by mutation testing: ``seeds_nan`` always 0 survived the fast suite)."""
    from convex_attention.paper.experiment import _paired_difference

    xs = (0.30, math.nan, 0.42, 0.71, 0.20)
    seed_means = [_group_mean("exact", "attention", 0, s, x) for s, x in enumerate(xs)]
    seed_means += [_group_mean("exact", "gradcam", 0, s, 0.1) for s in range(5)]
    mean, half, n, n_nan = _paired_difference(seed_means, seed_means[0], seed_means[-1])
    assert (n, n_nan) == (5, 1)
    assert mean == pytest.approx(mean_ci([0.2, 0.32, 0.61, 0.1])[0])
    assert half == pytest.approx(mean_ci([0.2, 0.32, 0.61, 0.1])[1])


def test_a_method_exactly_at_the_minimum_dev_auc_is_compared():
    """``compared_methods`` includes a mean dev AUC exactly at MIN_COMPARED_AUC (found by
    mutation testing: ``>`` in place of ``>=`` survived the fast suite)."""
    from convex_attention.paper.experiment import compared_methods
    from convex_attention.paper.validity import MIN_COMPARED_AUC

    rows = [{"method": "softmax", "auc": MIN_COMPARED_AUC}, {"method": "softmax", "auc": MIN_COMPARED_AUC},
            {"method": "exact", "auc": MIN_COMPARED_AUC - 1e-9}]
    assert compared_methods(rows, ("softmax", "exact")) == ["softmax"]


# ----------------------------------------------------------------------------- found by mutation testing (2)


def test_run_experiment_refuses_an_unknown_stage_by_name_before_reading_anything(tmp_path, monkeypatch):
    """An unknown stage is refused as such, before the variants file is read (found by
    mutation testing: without the check, a later refusal of the variants file still
    raised a ValueError whose message mentions a stage)."""
    import convex_attention.paper.experiment as experiment

    monkeypatch.setattr(experiment, "read_variants", lambda *a, **k: pytest.fail("variants read"))
    monkeypatch.setattr(experiment, "run_dev", lambda *a, **k: pytest.fail("dev stage started"))
    with pytest.raises(ValueError, match=r"stage must be one of dev, test, got 'final'"):
        run_experiment(_tiny_config(), str(tmp_path / "out"), stage="final", progress=False)
    assert not (tmp_path / "out").exists()


def test_splits_are_refused_when_they_overlap(monkeypatch):
    """``_splits`` checks its splits disjoint (here a forged pair that shares a seed)."""
    import convex_attention.paper.experiment as experiment

    monkeypatch.setattr(experiment, "split_specs", lambda *a, **k: {"train": SplitSpec("train", 5, 4, 0.3),
                                                                    "dev": SplitSpec("dev", 5, 4, 0.3)})
    monkeypatch.setattr(experiment, "build_split", lambda *a, **k: pytest.fail("a split was built"))
    with pytest.raises(ValueError, match="overlap"):
        experiment._splits(_tiny_config(), 0.3, ("train", "dev"))


def test_train_one_sets_each_run_and_reads_the_selected_epoch(monkeypatch):
    """``_train_one`` starts a fresh run (no resume) of the method, seed, difficulty and
    folder it is given (the plain CNN: a softmax configuration built as ``PlainCNN``), and
    reports the selected epoch's validation AUC, the mean epoch time and the checkpoint's
    threshold (NaN where the checkpoint has none)."""
    import convex_attention.paper.experiment as experiment
    from convex_attention.paper.models import PlainCNN

    seen = []
    metrics = [{"epoch": 1, "val_auc": 0.61, "epoch_time_s": 1.0}, {"epoch": 2, "val_auc": 0.83, "epoch_time_s": 2.0},
               {"epoch": 3, "val_auc": 0.70, "epoch_time_s": 6.0}]

    def fake_train(tc, datasets=None, log=None, model_class=None, data_split=None):
        seen.append((tc, datasets, model_class))
        assert data_split["difficulty"] == 0.6  # the checkpoints say their data are the protocol's splits
        return {"best": "best.pt", "best_epoch": 2, "metrics": metrics}

    states = iter([{"threshold": 0.25}, {}])
    monkeypatch.setattr(experiment, "train", fake_train)
    monkeypatch.setattr(experiment, "load_model", lambda path: ("attention model", next(states)))
    monkeypatch.setattr(experiment, "load_plain_cnn", lambda path: ("plain model", next(states)))
    config = _tiny_config(seed=99, difficulty=0.1)
    got = experiment._train_one(config, ("train set", "val set"), "/f/exact", "exact", 7, 0.6, {"head": "learned"},
                                False, None)
    tc, datasets, model_class = seen[0]
    assert (tc.model.method, tc.model.head, tc.seed, tc.difficulty, tc.out, tc.resume) == \
        ("exact", "learned", 7, 0.6, "/f/exact", None)
    assert datasets == ("train set", "val set") and model_class is None
    assert got["model"] == "attention model" and got["threshold"] == 0.25
    assert (got["best_epoch"], got["val_auc"]) == (2, 0.83) and got["epoch_time_s"] == pytest.approx(3.0)
    plain = experiment._train_one(config, ("train set", "val set"), "/f/plain", "plain_cnn", 3, 0.6, None, False,
                                  None)
    tc, _, model_class = seen[1]
    assert model_class is PlainCNN and tc.model.method == "softmax" and tc.seed == 3
    assert plain["model"] == "plain model" and math.isnan(plain["threshold"])


def test_evaluate_reports_maps_only_for_attention_models_and_the_ablation_only_when_asked():
    """An attention model has a violation and map statistics, and the map ablation when
    asked; the plain CNN has no maps: its violation is NaN, never a perfect 0."""
    from convex_attention.paper.data import SyntheticLesions
    from convex_attention.paper.experiment import _evaluate
    from convex_attention.paper.models import PlainCNN

    torch.manual_seed(0)
    data = SyntheticLesions(8, image_size=32, seed=0, lesion_fraction=0.5)
    model = AttentionUNet(method="softmax", **SMALL).eval()
    plain = _evaluate(PlainCNN(**SMALL).eval(), data, 0.5, "cpu", ablation=False, seed=0)
    assert math.isnan(plain["violation"]) and "n_max_p_L0" not in plain and "delta_auc_shuffled" not in plain
    quiet = _evaluate(model, data, 0.5, "cpu", ablation=False, seed=0)
    assert math.isfinite(quiet["violation"]) and "n_max_p_L1" in quiet and "delta_auc_shuffled" not in quiet
    ablated = _evaluate(model, data, 0.5, "cpu", ablation=True, seed=0)
    assert "delta_auc_shuffled" in ablated and "delta_bacc_uniform_L1" in ablated


def test_run_experiment_writes_the_test_folder_once_and_reads_the_run_log_before_spending(outside_git, monkeypatch):
    """Through the API: a second test run into the same folder is refused for its folder
    (not for its data seed) unless ``force``; ``force`` reaches the stage, which moves the
    earlier results aside; a damaged run log is refused before the ledger is written (found
    by mutation testing: each of these survived the fast suite)."""
    import convex_attention.paper.experiment as experiment

    monkeypatch.setattr(experiment, "_test_condition", lambda *a, **k: None)  # the bookkeeping only
    monkeypatch.setattr(experiment, "_write_test", lambda config, *a: {"report": ""})
    config = _tiny_config(methods=("softmax",), data_seed=1)
    path = outside_git / "variants.json"
    path.write_text(json.dumps(_judged_variants(config, True).to_dict()))
    out = outside_git / "exp"

    def test_stage(config=config, out=out, **kw):
        return run_experiment(config, str(out), stage="test", variants_path=str(path), progress=False,
                              log=lambda *a: None, variants_sha256=variants_digest(str(path)), **kw)

    ledger = str(outside_git / "data_ledger.json")
    test_stage()
    assert len(read_ledger(ledger)) == 1
    with pytest.raises(TestFolderExists, match="--force"):
        test_stage()
    test_stage(force=True)
    assert (out / "test.run-1").is_dir() and len(read_ledger(ledger)) == 2
    # a folder whose run log a killed run cut short (its test folder gone): a fresh data seed is refused too
    other = outside_git / "exp2"
    other.mkdir()
    (other / "test_runs.jsonl").write_bytes(b'{"run": 1, "cut')
    before = read_bytes(ledger)
    with pytest.raises(VariantsError, match="is not strict JSON"):
        test_stage(config.override(data_seed=2), other)
    assert read_bytes(ledger) == before and not (other / "test").exists()


def test_run_experiment_refuses_a_variant_its_methods_cannot_take_before_any_work(outside_git, monkeypatch):
    """The variants file's variant is checked against the run's methods, naming the file
    (a learned temperature for a method that cannot differentiate through it)."""
    import convex_attention.paper.experiment as experiment

    monkeypatch.setattr(experiment, "run_test", lambda *a, **k: pytest.fail("work started"))
    config = _tiny_config(methods=("cvxpylayers",), data_seed=1)
    variant = Variant(learn_temperature=True)
    checks = _accepting_checks()
    record = benchmark_record(checks, variant, 0.3, config.methods, (0, 1, 2, 3, 4), judged_settings(config))
    path = outside_git / "variants.json"
    path.write_text(json.dumps(Variants(variant, difficulties=(0.3,), benchmark=record).to_dict()))
    with pytest.raises(VariantsError, match="learn_temperature") as err:
        run_experiment(config, str(outside_git / "exp"), stage="test", variants_path=str(path), progress=False,
                       log=lambda *a: None, variants_sha256=variants_digest(str(path)))
    assert str(path) in str(err.value) and not (outside_git / "exp").exists()


def _fake_ablation() -> dict:
    """The map ablation's columns of a fake evaluation: the AUC and balanced accuracy drops with
    every level's maps shuffled or made uniform, and each level's alone."""
    row = {}
    for suffix, drop in (("", 0.2), ("_L0", 0.05), ("_L1", 0.15)):
        row.update({f"delta_auc_shuffled{suffix}": -drop, f"delta_auc_uniform{suffix}": -drop / 10,
                    f"delta_bacc_shuffled{suffix}": -drop, f"delta_bacc_uniform{suffix}": 0.0})
    return row


def _fake_dev_stage(monkeypatch, auc=None):
    """The dev stage with its training, evaluation, scoring and data replaced by fakes whose
    numbers are set here (a model is ``(method, seed, head)``): what it trains, on which
    split it evaluates, and what it ranks and proposes, in well under a second."""
    import convex_attention.paper.experiment as experiment
    from convex_attention.paper.validity import CheckResult, check_maps_drive_ranking, check_uniform_attention

    seen = {"train": [], "evaluate": [], "validity": [], "ap": []}
    auc = auc or {"softmax": 0.9, "exact": 0.7, "plain_cnn": 0.85}  # exact is below the bar: never compared
    bacc = {"softmax": 0.80, "exact": 0.60, "plain_cnn": 0.70}
    decisive = {("softmax", "bounded"): 0.4, ("softmax", "learned"): 0.6,
                ("exact", "bounded"): 0.95, ("exact", "learned"): 0.1}
    lesion = {("softmax", "bounded"): 0.9, ("softmax", "learned"): 0.2,
              ("exact", "bounded"): 0.5, ("exact", "learned"): 0.5}

    def splits(config, difficulty, names):
        return ({k: SplitSpec(k, i, 4, difficulty) for i, k in enumerate(names)}, {k: f"{k} set" for k in names})

    def train_one(config, datasets, folder, method, seed, difficulty, model_fields, progress, log):
        seen["train"].append((method, seed, folder, datasets))
        head = None if model_fields is None else model_fields["head"]
        return {"model": (method, seed, head), "threshold": 0.5, "best_epoch": 1, "epoch_time_s": 0.1,
                "train_time_s": 0.1, "val_auc": 0.9}

    def evaluate(model, dataset, threshold, device, ablation, seed, threshold_log_odds=None):
        seen["evaluate"].append((model, dataset, ablation))
        method, seed, _ = model
        row = {"auc": auc[method], "bacc": bacc[method] + 0.02 * seed, "bacc_argmax": 0.5, "violation": 0.0}
        if ablation:
            row.update(_fake_ablation())
        return row

    def dev_ap(config, model, dataset, indices, upsamplings, device):
        seen["ap"].append((model, dataset))
        method, seed, head = model
        return {f"ap_{m}_{u}_L{level}": (decisive if m == "decisive" else lesion)[method, head]
                + (0.05 if u == "bilinear" else 0.0) + 0.1 * level + 0.01 * seed
                for m in indices for u in upsamplings for level in (0, 1)}

    def validity(train_set, held_out, config):
        seen["validity"].append(held_out)
        return [CheckResult("location_free", "t", "b", 0.5, 0.6), CheckResult("pixel_map", "t", "a", 0.2, 0.3),
                check_maps_drive_ranking(None), check_uniform_attention(None, None)]

    for name, fake in (("_splits", splits), ("_train_one", train_one), ("_evaluate", evaluate), ("_dev_ap", dev_ap),
                       ("_validity", validity), ("check_validation_classes", lambda *a: None),
                       ("explained_indices", lambda ds, n: {"lesion": [0, 1], "decisive": [0, 1, 2]})):
        monkeypatch.setattr(experiment, name, fake)
    return seen


def _dev_config(**over):
    return _tiny_config(methods=("softmax", "exact"), dev_seeds=(0, 1),
                        grid={"head": ("bounded", "learned"), "upsampling": ("nearest", "bilinear")}, **over)


def test_the_dev_stage_trains_every_candidate_and_proposes_the_best_on_the_dev_split(tmp_path, monkeypatch):
    """Every (variant, method, dev seed) is trained once into its own folder, plus the plain
    CNN per dev seed; every model is evaluated and scored on the development split; the
    proposal is the (variant, upsampling) with the highest mean attention AP against the
    decisive mask over the compared methods only (dev AUC >= 0.80), its seeds and levels;
    check (c) compares balanced accuracies of that variant's best method and the plain CNN
    (found by mutation testing: the dev stage's choices survived the fast suite)."""
    from convex_attention.paper.experiment import run_dev

    seen = _fake_dev_stage(monkeypatch)
    config = _dev_config()
    dev = run_dev(config, str(tmp_path / "dev"), progress=False, log=lambda *a: None)
    trained = [(m, s) for m, s, _, _ in seen["train"]]
    assert sorted(trained) == sorted([(m, s) for m in ("softmax", "exact") for s in (0, 1)] * 2
                                     + [("plain_cnn", 0), ("plain_cnn", 1)])
    assert len({folder for _, _, folder, _ in seen["train"]}) == 10  # each run its own folder
    assert {d for *_, d in seen["train"]} == {("train set", "val set")}
    assert {d for _, d, _ in seen["evaluate"]} == {"dev set"} and {d for _, d in seen["ap"]} == {"dev set"}
    assert seen["validity"] == ["dev set"]
    assert [a for (m, *_), _, a in seen["evaluate"] if m == "plain_cnn"] == [False, False]
    assert all(a for (m, *_), _, a in seen["evaluate"] if m != "plain_cnn")
    # the ranking: softmax alone is compared; decisive AP 0.6 (learned) + 0.05 (bilinear) + levels 0.05 + seeds 0.005
    best = dev["summary"][0]
    assert (best["label"], best["compared"]) == ("tau=1.0, alpha=10, head=learned, duals=shared, upsampling=bilinear",
                                                 "softmax")
    assert [round(s["attention_ap_mean"], 6) for s in dev["summary"]] == [0.705, 0.655, 0.505, 0.455]
    assert best["bacc_mean"] == pytest.approx((0.80 + 0.82 + 0.60 + 0.62) / 4)  # every method's balanced accuracy
    assert best["softmax_ap_mean"] == pytest.approx(0.705) and best["exact_auc_mean"] == pytest.approx(0.7)
    proposal = read_json(tmp_path / "dev" / "proposed_variants.json")
    assert (proposal["model"]["head"], proposal["upsampling"]) == ("learned", "bilinear")
    assert dev["proposal"].variant.head == "learned" and dev["proposal"].variant.upsampling == "bilinear"
    # per level, for the proposed variant: the AUC change when that level alone is shuffled
    levels = {(e["method"], e["level"]): e for e in dev["levels"]}
    assert set(levels) == {(m, k) for m in ("softmax", "exact") for k in (0, 1, "all")}
    assert [levels["softmax", k]["delta_auc_shuffled_mean"] for k in (0, 1, "all")] == \
        pytest.approx([-0.05, -0.15, -0.2])
    assert levels["softmax", 1]["ap_decisive_mean"] == pytest.approx(0.6 + 0.05 + 0.1 + 0.005)
    # (c): softmax (mean balanced accuracy 0.81) against the plain CNN (0.71), paired by dev seed
    uniform = proposal["benchmark"]["checks"]["uniform_attention"]
    assert uniform["ran"] and uniform["value"] == pytest.approx(0.81 - 0.71)
    rows = read_csv_rows(tmp_path / "dev" / "dev_runs.csv")
    assert len(rows) == 2 * 2 * 2 * 2 + 2  # variant x upsampling x method x seed, and the plain CNNs


def test_the_dev_stage_trains_no_plain_cnn_when_it_is_off(tmp_path, monkeypatch):
    from convex_attention.paper.experiment import run_dev

    seen = _fake_dev_stage(monkeypatch)
    dev = run_dev(_dev_config(plain_cnn=False), str(tmp_path / "dev"), progress=False, log=lambda *a: None)
    assert "plain_cnn" not in {m for m, *_ in seen["train"]}
    assert not {r.name: r for r in dev["validity"]}["uniform_attention"].ran


def test_candidates_rank_by_ap_then_balanced_accuracy_and_an_unmeasured_one_last():
    """Equal AP: the higher balanced accuracy first; a candidate whose every method is below
    the AUC bar has no AP (NaN) and ranks after every measured one, whatever its balanced
    accuracy (found by mutation testing)."""
    from convex_attention.paper.experiment import _rank_candidates

    config = _dev_config()
    variants = config.variants()  # head bounded (0), learned (1)
    rows = []
    for vi, u, auc, ap, bacc in ((0, "nearest", 0.5, 0.9, 0.99), (0, "bilinear", 0.9, 0.3, 0.70),
                                 (1, "nearest", 0.9, 0.3, 0.75), (1, "bilinear", 0.9, 0.2, 0.90)):
        rows += [{"variant": vi, "upsampling": u, "method": m, "seed": s, "auc": auc, "attention_ap": ap,
                  "bacc": bacc} for m in config.methods for s in config.dev_seeds]
    summary = _rank_candidates(config, variants, rows)
    assert [(s["variant"], s["upsampling"]) for s in summary] == [(1, "nearest"), (0, "bilinear"), (1, "bilinear"),
                                                                   (0, "nearest")]
    assert math.isnan(summary[-1]["attention_ap_mean"]) and summary[-1]["compared"] == ""


def test_compared_methods_reads_the_test_stages_model_rows():
    """The test stage's rows name a ``model`` (the plain CNN among them), not a ``method``."""
    from convex_attention.paper.experiment import compared_methods

    rows = [{"model": "softmax", "auc": 0.9}, {"model": "plain_cnn", "auc": 0.85}, {"model": "exact", "auc": 0.5}]
    assert compared_methods(rows, ("softmax", "exact", "plain_cnn")) == ["softmax", "plain_cnn"]


def test_the_dev_ap_averages_every_explained_image_across_batches(monkeypatch):
    """``_dev_ap`` scores the explained images in batches: every one of them counts (here
    37 images, three batches), against the mask it is asked for."""
    import convex_attention.paper.experiment as experiment

    monkeypatch.setattr(experiment, "explanations", lambda model, images, target, posthoc: images)
    monkeypatch.setattr(experiment, "score_explanations",
                        lambda maps, masks, upsampling: [{"level": 0, "ap": float(m.sum() + k.sum())}
                                                         for m, k in zip(maps, masks)])

    class Data:
        def __getitem__(self, i):
            return torch.tensor([float(i)]), 1, torch.tensor([0.0])

        def decisive_mask(self, i):
            return torch.tensor([1000.0])

    chosen = list(range(3, 40))
    ap = experiment._dev_ap(QUICK, None, Data(), {"lesion": chosen, "decisive": chosen[:5]}, ("nearest",), "cpu")
    assert ap["ap_lesion_nearest_L0"] == pytest.approx(sum(chosen) / len(chosen))
    assert ap["ap_decisive_nearest_L0"] == pytest.approx(1000 + sum(chosen[:5]) / 5)


def test_a_summary_counts_a_metric_a_row_does_not_have_as_left_out():
    """A metric a row lacks (the plain CNN has no map statistics) is NaN: left out of the
    mean and counted, never averaged as 0."""
    from convex_attention.paper.experiment import _summary

    rows = [{"model": "softmax", "seed": s, "auc": a, "n_max_p_L0": n} for s, a, n in ((0, 0.8, 1.5), (1, 0.9, 2.5))]
    rows += [{"model": "plain_cnn", "seed": s, "auc": a} for s, a in ((0, 0.7), (1, 0.75))]
    rows += [{"model": "exact", "seed": 0, "auc": 0.9, "n_max_p_L0": 3.0}, {"model": "exact", "seed": 1, "auc": 0.8}]
    out = {s["model"]: s for s in _summary(rows, ("model",), ("auc", "n_max_p_L0"))}
    assert math.isnan(out["plain_cnn"]["n_max_p_L0_mean"]) and out["plain_cnn"]["n_max_p_L0_n_nan"] == 2
    assert out["exact"]["n_max_p_L0_mean"] == 3.0 and (out["exact"]["n_max_p_L0_n_used"],
                                                        out["exact"]["n_max_p_L0_n_nan"]) == (1, 1)
    assert out["softmax"]["n_max_p_L0_mean"] == pytest.approx(2.0) and out["plain_cnn"]["seeds"] == 2
    assert out["plain_cnn"]["auc_mean"] == pytest.approx(0.725)


def test_one_test_condition_trains_on_train_and_val_compares_on_dev_and_reports_on_test(tmp_path, monkeypatch):
    """One difficulty of the test stage with its training, evaluation and explanations
    replaced by fakes: every model is trained on the training and validation splits, its
    dev AUC (on the dev split) decides whether its maps are compared, the validity checks
    run on the test split, the model-free map is fitted on the dev split, check (c) reads
    the test split only, the post-hoc methods run on every model, examples are drawn for
    the first seed and each seed's randomisation check has its own seed (found by mutation
    testing: the test stage's choices survived the fast suite)."""
    import convex_attention.paper.experiment as experiment
    from convex_attention.paper.validity import CheckResult, check_maps_drive_ranking, check_uniform_attention

    seen = {"train": [], "evaluate": [], "validity": [], "model_free": [], "explain": [], "randomisation": []}
    dev_auc = {"softmax": 0.9, "exact": 0.6, "plain_cnn": 0.85}  # exact is not compared
    test_auc = {"softmax": 0.7, "exact": 0.95, "plain_cnn": 0.9}
    bacc = {("test set", "softmax"): 0.8, ("test set", "exact"): 0.7, ("test set", "plain_cnn"): 0.75,
            ("heldout set", "softmax"): 0.5, ("heldout set", "exact"): 0.5, ("heldout set", "plain_cnn"): 0.99}

    class Data:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, i):
            return torch.zeros(1, 2, 2), 1, torch.tensor([[1.0, 0.0], [0.0, 0.0]])

        def decisive_mask(self, i):
            return torch.ones(2, 2)

    names = {"train": "train set", "val": "val set", "dev": "dev set", "test": "test set",
             "test_heldout": "heldout set"}
    sets = {k: Data(v) for k, v in names.items()}

    def splits(config, difficulty, wanted):
        return {k: SplitSpec(k, i, 4, difficulty) for i, k in enumerate(wanted)}, {k: sets[k] for k in wanted}

    def train_one(config, datasets, folder, method, seed, difficulty, model_fields, progress, log):
        seen["train"].append((method, seed, tuple(d.name for d in datasets)))
        return {"model": (method, seed), "threshold": 0.5, "best_epoch": 1, "epoch_time_s": 0.1,
                "train_time_s": 0.1, "val_auc": 0.9}

    def evaluate(model, dataset, threshold, device, ablation, seed, threshold_log_odds=None):
        seen["evaluate"].append((model[0], dataset.name, ablation))
        auc = dev_auc if dataset.name == "dev set" else test_auc
        return {"auc": auc[model[0]], "bacc": bacc.get((dataset.name, model[0]), 0.5) + 0.01 * seed,
                **({"delta_auc_uniform": -0.1, "delta_auc_shuffled": -0.2} if ablation else {})}

    def explain_models(models, tset, indices, decisive, baseline_model, n_examples, **kw):
        seen["explain"].append((tset.name, tuple(baseline_model), n_examples))
        return [], []

    def validity(train_set, held_out, config):
        seen["validity"].append(held_out.name)
        return [CheckResult("location_free", "t", "b", 0.5, 0.6), check_maps_drive_ranking(None),
                check_uniform_attention(None, None)]

    def randomisation_check(model, images, target, seed, posthoc, labels):
        assert labels.shape == (len(images),) and set(labels.tolist()) <= {0, 1}  # the images' own labels
        seen["randomisation"].append((model[0], seed, posthoc))
        return []

    def model_free(dataset, seed, limit):
        seen["model_free"].append(dataset.name)
        return {"weights": [1.0]}

    for name, fake in (("_splits", splits), ("_train_one", train_one), ("_evaluate", evaluate),
                       ("_validity", validity), ("explain_models", explain_models), ("fit_model_free", model_free),
                       ("randomisation_check", randomisation_check), ("check_validation_classes", lambda *a: None),
                       ("explained_indices", lambda ds, n: {"lesion": [0, 1]} if ds.name == "test set"
                        else {"lesion": [0], "decisive": []}),
                       ("plot_examples", lambda *a, **k: None)):
        monkeypatch.setattr(experiment, name, fake)
    config = _tiny_config(methods=("softmax", "exact"), seeds=(5, 6), held_out_mimic="mottled",
                          data="synthetic-brightest", baseline_model="all")
    gathered = experiment._TestResults()
    (tmp_path / "rows").mkdir()
    experiment._test_condition(config, config.variants()[0], 0.3, str(tmp_path), "cpu", gathered, False,
                               lambda *a: None)
    models = ("softmax", "exact", "plain_cnn")
    assert sorted(seen["train"]) == sorted((m, s, ("train set", "val set")) for m in models for s in (5, 6))
    assert sorted(e for e in seen["evaluate"] if e[1] == "dev set") == sorted((m, "dev set", False)
                                                                              for m in models for s in (5, 6))
    assert {(d, a) for _, d, a in seen["evaluate"] if d != "dev set"} == {("test set", True), ("heldout set", True)}
    assert seen["validity"] == ["test set"] and seen["model_free"] == ["dev set"]
    [condition] = gathered.conditions
    assert condition["compared"] == ["softmax", "plain_cnn"]  # by dev AUC, not by test AUC
    assert {r["dev_auc"] for r in gathered.runs if r["model"] == "exact"} == {0.6}
    # (c): the best attention method on the test split (softmax 0.805) against the plain CNN (0.755)
    uniform = {r.name: r for r in condition["validity"]}["uniform_attention"]
    assert uniform.ran and uniform.value == pytest.approx(0.05)
    assert seen["explain"] == [(t, models, 4 if (t, s) == ("test set", 5) else 0)
                               for s in (5, 6) for t in ("test set", "heldout set")]
    assert sorted(seen["randomisation"]) == sorted((m, 10_000 + s, True) for m in models for s in (5, 6))
    assert gathered.chance[("difficulty0.3", "test", "lesion")] == pytest.approx(0.25)
    assert math.isnan(gathered.chance[("difficulty0.3", "heldout_mottled", "decisive")])  # no image: no chance level


def test_run_test_runs_every_difficulty_marks_the_folder_complete_and_refuses_a_mount_point(tmp_path, monkeypatch):
    """Every difficulty of the variants file runs, in order, and the folder's manifest is
    marked complete at the end; ``force`` over a folder that is a mount point (which a
    rename cannot move aside) is refused before anything is recorded."""
    import convex_attention.paper.experiment as experiment
    from convex_attention.paper.experiment import ablation_columns, run_test

    done = []
    monkeypatch.setattr(experiment, "_test_condition", lambda config, variant, difficulty, *a: done.append(difficulty))
    monkeypatch.setattr(experiment, "_write_test", lambda config, *a: {"report": ""})
    ledger = tmp_path / "configs" / "data_ledger.json"
    record = {"path": str(tmp_path / "configs" / "experiment_variants.json"), "sha256": "ab" * 32}
    folder = str(tmp_path / "exp" / "test")
    variants = Variants(difficulties=(0.3, 0.6))
    run_test(_tiny_config(data_seed=1), folder, variants, record, progress=False, log=lambda *a: None,
             ledger_path=str(ledger))
    assert done == [0.3, 0.6]
    assert read_json(os.path.join(folder, MANIFEST))["status"] == "complete"
    before = ledger.read_bytes()
    monkeypatch.setattr(experiment.os.path, "ismount", lambda path: os.path.abspath(path) == folder)
    with pytest.raises(TestFolderExists, match="mount point"):
        run_test(_tiny_config(data_seed=1), folder, variants, record, progress=False, log=lambda *a: None,
                 ledger_path=str(ledger), force=True)
    assert ledger.read_bytes() == before and not os.path.exists(folder + ".run-1")
    # the map-ablation columns: every level at once, then each of the model's levels alone
    config = _tiny_config()
    levels = len(config.train.model.attention_blocks)
    assert levels == 2 and ablation_columns(config) == (
        "delta_bacc_uniform", "delta_bacc_shuffled", "delta_auc_uniform", "delta_auc_shuffled",
        *(f"{c}_L{k}" for k in range(levels) for c in ("delta_bacc_uniform", "delta_bacc_shuffled",
                                                       "delta_auc_uniform", "delta_auc_shuffled")))


def test_the_headline_pairs_each_compared_models_own_best_level():
    """The paired difference is of the exact group (its level too), and each compared
    attention model's row pairs that model's own best level against the best post-hoc map
    (found by mutation testing: pairing the overall best attention map, or matching groups
    without their level, survived the fast suite)."""
    from convex_attention.paper.experiment import _headline, _summary

    seed_means = []
    for seed, shift in enumerate((0.0, 0.03, -0.02)):
        seed_means += [_group_mean("exact", "attention", 0, seed, 0.30 + shift),
                       _group_mean("exact", "attention", 1, seed, 0.50),
                       _group_mean("softmax", "attention", 0, seed, 0.40 + shift),
                       _group_mean("softmax", "attention", 1, seed, 0.10),
                       _group_mean("exact", "gradcam", 0, seed, 0.20)]
    summary = _summary(seed_means, ("condition", "test_set", "model", "method", "level", "resolution", "upsampling",
                                    "mask"), ("ap",))
    [h] = _headline(summary, seed_means, {"c": ["exact", "softmax"]})
    assert (h["attention"]["model"], h["attention"]["level"]) == ("exact", 1)
    assert h["difference"]["ap_mean"] == pytest.approx(0.30) and h["difference"]["ap_ci95"] == pytest.approx(0.0)
    soft = h["by_model"]["softmax"]
    assert soft["level"] == 0 and soft["difference_mean"] == pytest.approx(0.20 + 1 / 300)
    assert soft["difference_ci95"] == pytest.approx(mean_ci([0.20, 0.23, 0.18])[1])


def test_each_methods_candidate_means_leave_a_nan_seed_out_and_count_it():
    # a seed whose model failed gives NaN: the method's mean is over the other seeds, with its
    # interval and the count left out, as every other mean (found by mutation testing of the
    # reports: a plain mean made the whole cell NaN)
    from convex_attention.paper.experiment import _rank_candidates

    config = _tiny_config(methods=("softmax", "exact"))
    [u] = config.candidates()["upsampling"][:1]
    rows = [{"variant": 0, "upsampling": u, "method": m, "seed": s, "auc": auc, "attention_ap": 0.5, "bacc": 0.7}
            for m, aucs in (("softmax", (0.9, 0.8, 0.7)), ("exact", (0.95, math.nan, 0.85)))
            for s, auc in enumerate(aucs)]
    [entry] = [e for e in _rank_candidates(config, config.variants(), rows) if e["upsampling"] == u]
    assert entry["exact_auc_mean"] == pytest.approx(0.9) and entry["exact_auc_ci95"] == pytest.approx(
        mean_ci([0.95, 0.85])[1])
    assert (entry["exact_auc_n_used"], entry["exact_auc_n_nan"]) == (2, 1)
    assert (entry["softmax_auc_n_used"], entry["softmax_auc_n_nan"]) == (3, 0)


def test_a_candidates_attention_ap_interval_is_over_the_dev_seeds():
    from scipy.stats import t

    from convex_attention.paper.experiment import _rank_candidates

    config = _tiny_config(methods=("softmax", "exact"))
    [u] = config.candidates()["upsampling"][:1]
    per_seed = {0: 0.40, 1: 0.50, 2: 0.60, 3: 0.45, 4: 0.55}  # the seed decides; the two methods agree
    rows = [{"variant": 0, "upsampling": u, "method": m, "seed": s, "auc": 0.9, "attention_ap": ap + d,
             "bacc": 0.7} for s, ap in per_seed.items() for m, d in (("softmax", -0.01), ("exact", 0.01))]
    [entry] = [e for e in _rank_candidates(config, config.variants(), rows) if e["upsampling"] == u]
    # oracle, by hand: the mean over methods per seed, then a t interval with 5 - 1 degrees of freedom
    means = [sum(r["attention_ap"] for r in rows if r["seed"] == s) / 2 for s in per_seed]
    m = sum(means) / 5
    sd = math.sqrt(sum((x - m) ** 2 for x in means) / 4)
    assert entry["attention_ap_mean"] == pytest.approx(m)
    assert entry["attention_ap_ci95"] == pytest.approx(t.ppf(0.975, 4) * sd / math.sqrt(5), rel=1e-6)


def test_the_dev_runs_keep_every_level_s_map_statistics():
    """A near-miss of the last reviews: the dev rows copied n_max_p of levels 0 and 1 and the entropy and score
    range of level 0 only, so a 3-level model's dev_runs.csv had no level-2 statistics (runs.csv has them).  The
    dev columns now hold every map statistic that runs.csv records, at every level."""
    from convex_attention.paper.experiment import _DEV_COLUMNS, RUN_COLUMNS

    per_level = [c for c in RUN_COLUMNS if c.startswith(("n_max_p_L", "entropy_ratio_L", "score_range_L"))]
    assert "score_range_L2" in per_level and set(per_level) <= set(_DEV_COLUMNS)


# ---- ca_rev137 (strict xfail: review of 8f7bdd7)


class _Rev137Started(Exception):
    """Raised by the stand-in for the work: the data it was handed are in ``args``."""


@pytest.mark.parametrize("command", ["train", "explain"])
def test_ca_rev137_an_experiment_runs_checkpoint_is_continued_or_explained_on_its_own_splits(command, tmp_path,
                                                                                              capsys, monkeypatch):
    """A model of the experiment (_train_one: QUICK at 32x32, the protocol's train and val splits at difficulty
    0.3, generator seeds 1001500 and 1001501, mimic types without the held-out 'mottled') stores train_config
    data 'synthetic', data_seed 0, n_val 8, as if trained by `train`.  `train --resume RUN/last.pt --epochs 2
    --out OTHER` and `explain --checkpoints a=RUN/best.pt` rebuild the data from it (datasets_of: seeds 0 and
    10000, every mimic type).  Expected: refused (exit 2), or handed the validation split the model was selected
    on.  Observed: both start, on 8 other validation images (the resumed run picks best.pt across two validation
    sets; explain scores 'validation images' that may hold the held-out mimic type)."""
    import convex_attention.paper.explain as explain_module
    import convex_attention.paper.train as train_module
    from convex_attention.paper.experiment import _splits, _train_one

    config = QUICK.override(n_train=16, n_val=8, epochs=1, batch_size=8, methods=("softmax",), **SMALL)
    _, sets = _splits(config, 0.3, ("train", "val"))
    folder = tmp_path / "run"
    _train_one(config, (sets["train"], sets["val"]), str(folder), "softmax", 0, 0.3, None, False,
               lambda *a, **k: None)

    def started(*args, **kwargs):
        raise _Rev137Started(args, kwargs)

    if command == "train":
        monkeypatch.setattr(train_module, "train", started)
        argv = ["train", "--resume", str(folder / "last.pt"), "--epochs", "2", "--quiet", "--out", str(tmp_path / "o")]
    else:
        monkeypatch.setattr(explain_module, "explain_models", started)
        argv = ["explain", "--checkpoints", f"a={folder / 'best.pt'}", "--n-images", "1", "--quiet",
                "--out", str(tmp_path / "o")]
    try:
        code, _, err = run(argv, capsys)
    except _Rev137Started as work:
        args, kwargs = work.args
        val = kwargs["datasets"][1] if command == "train" else args[1]
        images = torch.stack([val[i][0] for i in range(len(val))])
        same = images.shape == sets["val"].images.shape and torch.equal(images, sets["val"].images)
        assert same, "handed other validation images than the model was selected on"
        return
    assert code == 2 and "Traceback" not in err, err  # refused, in one line


# ---- ca_rev150 (strict xfail: review of 5a70ee6)
def test_ca_rev150_a_candidate_does_not_win_by_a_method_failing_the_dev_auc_bar():
    # the two variants differ in alpha only: softmax and exact are the same (shared) models; learned_dual trains in
    # variant 0 (AUC 0.9, ap 0.2) and fails in variant 1 (AUC 0.5): variant 1's mean over {softmax, exact} (0.61)
    # beat variant 0's over all three (0.48), although it is worse in every method (and in balanced accuracy)
    from convex_attention.paper.experiment import _rank_candidates

    config = _tiny_config(methods=("softmax", "exact", "learned_dual"), dev_seeds=(0, 1, 2),
                          grid={"alpha": (1.0, 10.0)})
    [u] = config.candidates()["upsampling"]
    rows = [{"variant": vi, "upsampling": u, "method": m, "seed": s, "auc": auc, "attention_ap": ap + 0.01 * s,
             "bacc": bacc}
            for vi in (0, 1) for s in (0, 1, 2)
            for m, auc, ap, bacc in (("softmax", 0.9, 0.6, 0.8), ("exact", 0.9, 0.6, 0.8),
                                     ("learned_dual", (0.9, 0.5)[vi], 0.2, (0.8, 0.5)[vi]))]
    summary = _rank_candidates(config, config.variants(), rows)
    assert summary[0]["variant"] == 0, [(e["variant"], e["compared"], e["attention_ap_mean"]) for e in summary]


def test_ca_rev150_check_c_names_a_tie_for_the_best_attention_method():
    from convex_attention.paper.experiment import _uniform_check

    result = _uniform_check({"softmax": {0: 0.9, 1: 0.8}, "exact": {0: 0.8, 1: 0.9}}, {0: 0.7, 1: 0.7}, "the split")
    assert result.ran and "softmax" in result.note
    assert "exact" in result.note, result.note  # tied at 0.85: the paired interval depends on which one is taken


# ---- ca_rev151 (strict xfail: review of 821b769)
def _ca_rev151_dev_where_more_compared_beats_higher_ap(monkeypatch, tmp_path):
    # head=bounded: softmax and exact both reach the dev AUC bar, attention ap 0.3; head=learned: exact fails the bar
    # (AUC 0.7), softmax alone is compared with ap 0.6.  821b769 ranks bounded first (2 methods compared)
    import convex_attention.paper.experiment as experiment
    from convex_attention.paper.experiment import run_dev

    _fake_dev_stage(monkeypatch)

    def evaluate(model, dataset, threshold, device, ablation, seed, threshold_log_odds=None):
        method, seed, head = model
        auc = {"softmax": 0.9, "plain_cnn": 0.85}.get(method, 0.9 if head == "bounded" else 0.7)
        row = {"auc": auc, "bacc": 0.8 + 0.02 * seed, "bacc_argmax": 0.5, "violation": 0.0}
        if ablation:
            row.update(_fake_ablation())
        return row

    def dev_ap(config, model, dataset, indices, upsamplings, device):
        ap = 0.3 if model[2] == "bounded" else 0.6
        return {f"ap_{m}_{u}_L{level}": ap for m in indices for u in upsamplings for level in (0, 1)}

    monkeypatch.setattr(experiment, "_evaluate", evaluate)
    monkeypatch.setattr(experiment, "_dev_ap", dev_ap)
    config = _tiny_config(methods=("softmax", "exact"), dev_seeds=(0, 1),
                          grid={"head": ("bounded", "learned"), "upsampling": ("nearest",)})
    dev = run_dev(config, str(tmp_path / "dev"), progress=False, log=lambda *a: None)
    first, second = dev["summary"][:2]
    assert (first["compared"], second["compared"]) == ("softmax exact", "softmax")  # holds today
    assert first["attention_ap_mean"] < second["attention_ap_mean"]  # holds today: the proposal has the lower ap
    return dev


def test_ca_rev151_the_proposal_note_states_the_rule_that_chose_it(tmp_path, monkeypatch):
    _ca_rev151_dev_where_more_compared_beats_higher_ap(monkeypatch, tmp_path)
    note = read_json(tmp_path / "dev" / "proposed_variants.json")["note"]
    assert not note.startswith("Proposed by the dev stage: highest mean attention ap"), note


def test_ca_rev151_the_dev_report_states_the_ranking_its_table_shows(tmp_path, monkeypatch):
    _ca_rev151_dev_where_more_compared_beats_higher_ap(monkeypatch, tmp_path)
    report = read_text(tmp_path / "dev" / "dev.md")
    ranked = report.split("## Candidates (best first)")[1].strip().splitlines()[0]
    assert not ranked.startswith("Ranked by the attention ap"), ranked


def test_ca_rev151_check_c_s_tie_note_names_the_method_whose_gap_it_reports():
    import numpy as np

    from convex_attention.paper.experiment import _uniform_check

    softmax, exact = [0.7, 0.8, 0.9], [0.8, 0.8, 0.8]  # means 0.7999999999999999, 0.8000000000000002: tied
    assert float(np.mean(exact)) > float(np.mean(softmax))  # holds today
    plain = {0: 0.5, 1: 0.5, 2: 0.5}
    result = _uniform_check({"softmax": dict(enumerate(softmax)), "exact": dict(enumerate(exact))}, plain, "split")
    assert "tie at the higher mean" in result.note, result.note  # holds today
    # the note says the gap is that of "the first in the methods' order", softmax: it is exact's (0.3 each seed)
    assert "the paired gap is softmax's" in result.note, result.note


# ---- ca_rev166 (review of d03eab2; its strict xfails now pass)


def test_ca_rev166_force_over_an_absent_test_folder_respends_the_split(tmp_path, monkeypatch):
    """Run: a test run into exp1/test (data seed 1); its folder is then moved away by hand; the same
    test stage with force=True into exp1/test.
    Expected: refused (there is no earlier folder for --force to move aside, and data seed 1 is spent),
    or, if it runs, the report does not say that run 1's results are in `exp1/test`.
    Observed: it runs (the test split of data seed 1 is touched a second time) and the history line
    lists run 1 with "results in `exp1/test`", the folder that now holds run 2's results."""
    import shutil

    import convex_attention.paper.experiment as experiment
    from convex_attention.paper.experiment import run_test
    from convex_attention.paper.protocol import TestFolderExists, VariantsError
    from convex_attention.paper.reports import history_line

    histories = []
    monkeypatch.setattr(experiment, "_test_condition", lambda *a, **k: None)
    monkeypatch.setattr(experiment, "_write_test", lambda config, *a: histories.append(a[-1]) or {"report": ""})
    ledger = str(tmp_path / "configs" / "data_ledger.json")
    record = {"path": str(tmp_path / "configs" / "experiment_variants.json"), "sha256": "ab" * 32}
    folder = str(tmp_path / "exp1" / "test")
    variants = Variants(difficulties=(0.3,))
    run_test(_tiny_config(data_seed=1), folder, variants, record, progress=False, log=lambda *a: None,
             ledger_path=ledger)
    shutil.move(folder, str(tmp_path / "elsewhere"))
    try:
        run_test(_tiny_config(data_seed=1), folder, variants, record, progress=False, log=lambda *a: None,
                 ledger_path=ledger, force=True)
    except (VariantsError, TestFolderExists):
        return
    line = history_line(histories[-1], "synthetic")
    earlier = line.split("the earlier ones: ", 1)[1].split(". The protocol", 1)[0]
    assert "results in `exp1/test`" not in earlier, line


def test_ca_rev166_a_small_validity_images_crashes_the_test_stage_after_spending_it(tmp_path, monkeypatch):
    """Run: run_test (the test stage) with validity_images=3 (accepted by ExperimentConfig.validate and
    the command's preflight; n_dev=3 does the same), training skipped.
    Expected: refused before the data ledger records the run, or the model-free reference reported
    as not run (as checks (a) and (b) are on so few images).
    Observed: the ledger records the run (the test split is spent) and the folder is claimed, then
    fit_model_free raises "ValueError: the model-free map needs at least 4 development images, got 3"
    (a traceback from the command: cmd_experiment does not catch it)."""
    import convex_attention.paper.experiment as experiment
    from convex_attention.paper.experiment import run_test

    monkeypatch.setattr(experiment, "_test_seed", lambda *a, **k: None)  # no training: the stage's steps only
    monkeypatch.setattr(experiment, "_write_test", lambda config, *a: {"report": ""})
    ledger = str(tmp_path / "configs" / "data_ledger.json")
    record = {"path": str(tmp_path / "configs" / "experiment_variants.json"), "sha256": "ab" * 32}
    try:
        run_test(_tiny_config(data_seed=1, validity_images=3), str(tmp_path / "exp" / "test"),
                 Variants(difficulties=(0.3,)), record, progress=False, log=lambda *a: None, ledger_path=ledger)
    except ValueError as err:
        assert not os.path.exists(ledger), f"the test split was spent, then the stage failed: {err}"


# ---- ca_rev184 (review of d302fba; its strict xfails now pass)


class _Started(Exception):
    """Past every refusal: the test stage begins its work."""


def _ca_rev184_pinned_test_stage(tmp_path, monkeypatch, config, stop: str):
    """Run the test stage of ``config`` (a pinned variants file outside git, no verdict: allowed) until
    ``experiment.<stop>`` is called; returns what it raised and the data seeds the ledger spent."""
    import convex_attention.paper.experiment as experiment

    def started(*a, **k):
        raise _Started

    monkeypatch.setattr(experiment, stop, started)
    path = tmp_path / "experiment_variants.json"
    path.write_text(json.dumps(Variants(difficulties=(0.3,), held_out_mimic="mottled").to_dict()))
    try:
        run_experiment(config, str(tmp_path / "out"), progress=False, log=lambda *a, **k: None, stage="test",
                       variants_path=str(path), variants_sha256=variants_digest(str(path)),
                       allow_rejected_benchmark=True)
        raised = None
    except Exception as err:  # noqa: BLE001 (whatever it is, the ledger must not have spent the seed)
        raised = err
    return raised, [r["data_seed"] for r in read_ledger(str(tmp_path / "data_ledger.json"))]


def test_ca_rev184_a_split_of_images_per_seed_images_is_refused_after_the_test_split_is_spent(outside_git, tmp_path,
                                                                                              monkeypatch):
    """Run: the test stage with n_test = IMAGES_PER_SEED (1 000 003: _COUNT's upper bound, which
    check_seed_block allows, "this many exactly end one key before" the next seed) at 32x32.
    Expected: refused before the data ledger records the run, or its splits drawn.
    Observed: the ledger records data seed 3 and OUT/test is claimed, then _splits -> check_disjoint
    raises "ValueError: a split of 1000003 images or more would reach the next seed's images" (its
    bound is >=, the configuration's >): the seed is spent for nothing."""
    from convex_attention.paper.config import IMAGES_PER_SEED

    config = _tiny_config(data_seed=3, n_test=IMAGES_PER_SEED, methods=("softmax",))
    config.validate()  # oracle: the configuration accepts it
    raised, spent = _ca_rev184_pinned_test_stage(tmp_path, monkeypatch, config, "build_split")
    assert isinstance(raised, _Started) or not spent, f"data seed(s) {spent} spent, then: {raised!r}"


def test_ca_rev184_a_validation_split_without_a_class_is_found_after_the_test_split_is_spent(outside_git, tmp_path,
                                                                                              monkeypatch):
    """Run: the test stage at data seed 7 with 4 validation images (the dev stage checks its own
    validation split before any work; at data seed 0 it holds both classes).
    Expected: refused before the data ledger records the run (its splits are known, and cheap to draw),
    or training starts.
    Observed: the ledger records data seed 7 and OUT/test is claimed, then _test_condition's
    check_validation_classes raises ValidationClassesError ("... change --data-seed"): the test
    split of a seed that never ran is spent."""
    from convex_attention.paper.protocol import build_split, split_specs

    config = _tiny_config(data="synthetic-brightest", data_seed=7, n_val=4, methods=("softmax",))
    # oracle: at data seed 7 the validation split's 4 images are all of one class; at data seed 0, not
    for seed, classes in ((7, 1), (0, 2)):
        spec = split_specs("synthetic-brightest", seed, {"val": 4}, 0.3, "mottled")["val"]
        val = build_split(spec, "synthetic-brightest", 32, 4)
        assert len({int(val[i][1]) for i in range(4)}) == classes
    raised, spent = _ca_rev184_pinned_test_stage(tmp_path, monkeypatch, config, "train")
    assert isinstance(raised, _Started) or not spent, f"data seed(s) {spent} spent, then: {raised!r}"


# ---- ca_rev199 (review of fabf323; its strict xfails now pass)

def test_ca_rev199_a_seed_mean_leaves_out_the_infinity_it_counts_as_left_out():
    """7624c06 made nan_counts count ±inf as left out and mean_ci/mean_se leave it out; _seed_mean takes its
    counts from nan_counts but its mean from np.nanmean, which keeps inf. Seen: (inf, 1 used, 1 left out),
    so the seed's finite image is then dropped too, as an inf seed mean, by summary_cells."""
    from convex_attention.paper.experiment import _seed_mean

    rows = [dict(condition="c", test_set="test", model="m", method="gradcam", level=0, stage_index=0,
                 stage="classifier", seed=0, image=i, spearman_abs=v) for i, v in enumerate([0.5, math.inf])]
    got = _seed_mean(rows, "spearman_abs")
    assert (got["spearman_abs_n_used"], got["spearman_abs_n_nan"]) == (1, 1)
    assert got["spearman_abs"] == 0.5, got


# ---- ca_rev206 (mutation review of 73c68db)


def test_ca_rev206_the_folder_log_records_a_test_run_before_any_work(tmp_path, monkeypatch):
    """Kills ``log_test_run`` moved after the work: a test run that dies in its first condition
    has spent its split, and the folder's ``test_runs.jsonl`` says so (as the ledger does)."""
    import convex_attention.paper.experiment as experiment
    from convex_attention.paper.experiment import run_test

    def dies(*args, **kwargs):
        raise RuntimeError("killed mid-run")

    monkeypatch.setattr(experiment, "_test_condition", dies)
    monkeypatch.setattr(experiment, "_write_test", lambda *a, **k: pytest.fail("the work finished"))
    ledger = str(tmp_path / "configs" / "data_ledger.json")
    record = {"path": str(tmp_path / "configs" / "experiment_variants.json"), "sha256": "ab" * 32}
    with pytest.raises(RuntimeError, match="killed mid-run"):
        run_test(_tiny_config(data_seed=1), str(tmp_path / "exp" / "test"), Variants(difficulties=(0.3,)), record,
                 progress=False, log=lambda *a: None, ledger_path=ledger)
    (spent,) = read_ledger(ledger)  # oracle: the ledger spent the split before the work
    (logged,) = read_test_runs(str(tmp_path / "exp"))
    assert logged["run_id"] == spent["run_id"] and logged["folder"] == "exp/test"


def test_ca_rev206_run_test_itself_refuses_force_over_other_variants_its_folder_log_records(tmp_path, monkeypatch):
    """Kills ``run_test`` checking under its lock without the folder's own log
    (``folder_runs=None``): called directly (or after the log grew since ``run_experiment``'s
    check), ``--force`` over a run of another variants file that only ``test_runs.jsonl``
    records is refused before the ledger, the move or any work."""
    import convex_attention.paper.experiment as experiment
    from convex_attention.paper.experiment import run_test

    monkeypatch.setattr(experiment, "_test_condition", lambda *a, **k: None)
    monkeypatch.setattr(experiment, "_write_test", lambda *a, **k: {"report": ""})
    record = {"path": str(tmp_path / "configs" / "experiment_variants.json"), "sha256": "ab" * 32}
    folder = str(tmp_path / "exp" / "test")
    run_test(_tiny_config(data_seed=1), folder, Variants(difficulties=(0.3,)), record, progress=False,
             log=lambda *a: None, ledger_path=str(tmp_path / "first" / "data_ledger.json"))
    # oracle: the folder's log records the first run, with the first variants file's SHA-256
    assert [r["variants_sha256"] for r in read_test_runs(str(tmp_path / "exp"))] == ["ab" * 32]
    other = tmp_path / "second" / "data_ledger.json"  # a ledger that does not record it
    monkeypatch.setattr(experiment, "_test_condition", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(VariantsError, match="same variants only"):
        run_test(_tiny_config(data_seed=1), folder, Variants(difficulties=(0.3,)), {**record, "sha256": "cd" * 32},
                 progress=False, log=lambda *a: None, ledger_path=str(other), force=True)
    assert not other.exists() and not (tmp_path / "exp" / "test.run-1").exists()
    assert len(read_test_runs(str(tmp_path / "exp"))) == 1


# ---- ca_rev210 (mutation review of ef12afd, explain and experiment): tests that kill surviving mutants
def test_ca_rev210_the_headline_never_picks_a_map_whose_mean_ap_is_not_a_number():
    """A map whose ap is NaN on every seed (first in the summary) loses to any map with a mean: with NaN as its
    own key, max() had kept it, as no number compares greater than NaN."""
    from convex_attention.paper.experiment import _headline, _summary

    seed_means = []
    for seed in range(3):
        seed_means += [_group_mean("exact", "attention", 0, seed, math.nan),
                       _group_mean("exact", "attention", 1, seed, 0.50 + 0.01 * seed),
                       _group_mean("exact", "gradcam", 0, seed, math.nan),
                       _group_mean("exact", "lrp", -1, seed, 0.40)]
    summary = _summary(seed_means, ("condition", "test_set", "model", "method", "level", "resolution", "upsampling",
                                    "mask"), ("ap",))
    [h] = _headline(summary, seed_means, {"c": ["exact"]})
    assert (h["attention"]["level"], h["posthoc"]["method"]) == (1, "lrp")
    assert h["by_model"]["exact"]["level"] == 1
    assert h["difference"]["ap_mean"] == pytest.approx(0.11) and h["difference"]["seeds_nan"] == 0


def test_ca_rev210_the_chance_level_of_the_decisive_masks_is_their_own_pixel_share():
    """The decisive masks' chance line is the share of the deciding structure (here 3 of 4 pixels), not that of
    the lesion (1 of 4), which the dataset's items carry."""
    from convex_attention.paper.experiment import _mask_share

    class Data:
        def __getitem__(self, i):
            return torch.zeros(1, 2, 2), 1, torch.tensor([[True, False], [False, False]])

        def decisive_mask(self, i):
            return torch.tensor([[True, True], [True, False]])

    assert _mask_share(Data(), [0, 1], "lesion") == pytest.approx(0.25)
    assert _mask_share(Data(), [0, 1], "decisive") == pytest.approx(0.75)


def test_ca_rev210_a_seed_mean_keeps_the_group_s_keys_and_names_no_image():
    """A seed's mean over images keeps its group's keys (model, method, level, stage, seed) and drops the
    per-image ones (the image index and both correlations), as its docstring says."""
    from convex_attention.paper.experiment import _seed_mean

    rows = [dict(condition="c", test_set="test", model="m", method="gradcam", level=0, stage_index=1, stage="head",
                 seed=3, image=i, spearman_abs=v, spearman_signed=-v) for i, v in enumerate((0.2, 0.4))]
    got = _seed_mean(rows, "spearman_abs")
    assert set(got) == {"condition", "test_set", "model", "method", "level", "stage_index", "stage", "seed",
                        "spearman_abs", "spearman_abs_n_used", "spearman_abs_n_nan"}
    assert got["spearman_abs"] == pytest.approx(0.3) and got["seed"] == 3


def test_ca_rev210_the_paired_difference_pairs_only_the_seeds_both_groups_have():
    """A seed that one group lacks (a model not run with it) is left out of the pairing, not a KeyError."""
    from convex_attention.paper.experiment import _paired_difference

    seed_means = ([_group_mean("exact", "attention", 0, s, 0.5 + 0.1 * s) for s in range(3)]
                  + [_group_mean("exact", "lrp", -1, s, 0.4) for s in range(2)])
    mean, half, n, n_nan = _paired_difference(seed_means, seed_means[0], seed_means[-1])
    assert (n, n_nan) == (2, 0) and mean == pytest.approx(0.15) and half == pytest.approx(mean_ci([0.1, 0.2])[1])


def test_ca_rev210_the_test_stage_runs_the_post_hoc_methods_on_the_models_the_config_names():
    """``baseline_model``: every model ("all", the plain CNN included), none (None) or the one named."""
    from convex_attention.paper.experiment import _posthoc_models

    assert _posthoc_models(_tiny_config(methods=("softmax", "exact"))) == ("softmax", "exact", "plain_cnn")
    assert _posthoc_models(_tiny_config(methods=("softmax", "exact"), baseline_model=None)) == ()
    assert _posthoc_models(_tiny_config(methods=("softmax", "exact"), baseline_model="exact")) == ("exact",)


def test_ca_rev210_the_accuracy_columns_hold_no_map_statistic_of_a_level_the_model_lacks():
    from convex_attention.paper.experiment import accuracy_columns

    config = _tiny_config()
    levels = len(config.train.model.attention_blocks)
    assert levels < 3  # (MAX_ATTENTION_LEVELS): a level is absent
    columns = accuracy_columns(config)
    assert not [c for c in columns if c.endswith(tuple(f"_L{k}" for k in range(levels, 3)))]
    assert all(f"{m}_L{k}" in columns for m in ("n_max_p", "entropy_ratio", "score_range") for k in range(levels))


def test_ca_rev210_the_randomisation_check_runs_on_the_images_of_the_primary_mask(tmp_path, monkeypatch):
    """Where the test split marks the deciding structure, the randomisation check takes its images from the
    decisive list (the mask the maps are judged on: primary_mask), not from the lesion list."""
    import convex_attention.paper.experiment as experiment

    class Data:
        def __getitem__(self, i):
            return torch.zeros(1, 2, 2), i % 2, torch.ones(2, 2, dtype=torch.bool)

    seen = []

    def randomisation_check(model, images, target, seed, posthoc, labels):
        seen.append(labels.tolist())
        return [{"stage": "head", "stage_index": 0, "method": "attention", "level": 0, "position": p,
                 "spearman_abs": 0.5, "spearman_signed": 0.5} for p in range(len(images))]

    for name, fake in (("_train_one", lambda *a: {"model": "m", "threshold": 0.5, "best_epoch": 1,
                                                   "epoch_time_s": 0.1, "train_time_s": 0.1, "val_auc": 0.9}),
                       ("_evaluate", lambda *a, **k: {"auc": 0.9, "bacc": 0.8}),
                       ("explain_models", lambda *a, **k: ([], [])), ("randomisation_check", randomisation_check)):
        monkeypatch.setattr(experiment, name, fake)
    config = _tiny_config(methods=("softmax",), seeds=(5, 6), plain_cnn=False, n_sanity=2)
    gathered = experiment._TestResults()
    (tmp_path / "rows").mkdir()
    indices = {"test": {"lesion": [0, 2, 4], "decisive": [1, 3, 5]}}
    experiment._test_seed(config, config.variants()[0], "c", 0.3, 6, {"train": None, "val": None, "dev": None},
                          {"test": Data()}, indices, {"weights": [1.0]}, str(tmp_path), "cpu", gathered, False,
                          lambda *a: None)
    assert [r["image"] for r in gathered.randomisation] == [1, 3] and seen == [[1, 1]]  # the test split's indices
    assert [(r["stage"], r["stage_index"]) for r in gathered.randomisation] == [("head", 0), ("head", 0)]


def test_ca_rev210_the_violation_reported_is_the_mean_over_the_images(monkeypatch):
    import convex_attention.paper.experiment as experiment

    predicted = {"logits": None, "labels": None, "maps": [], "scores": [], "violation": torch.tensor([0.1, 0.3, 0.6])}
    monkeypatch.setattr(experiment, "predict", lambda *a, **k: predicted)
    monkeypatch.setattr(experiment, "classification", lambda *a: {"auc": 0.5})
    monkeypatch.setattr(experiment, "map_statistics", lambda maps, scores: [])
    row = experiment._evaluate(torch.nn.Identity(), None, 0.5, "cpu", ablation=False, seed=0)
    assert row["violation"] == pytest.approx(1 / 3)  # (the largest, 0.6, is no mean)


def test_ca_rev210_device_auto_takes_the_gpu_where_there_is_one(monkeypatch):
    from convex_attention.paper.experiment import _device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _device(_tiny_config(device="auto")) == "cuda" and _device(_tiny_config(device="cpu")) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _device(_tiny_config(device="auto")) == "cpu"


def test_ca_rev210_each_dev_row_averages_each_mask_s_own_ap(tmp_path, monkeypatch):
    """``attention_ap_<mask>`` is the mean over levels of that mask's ap (the lesion's here 0.2, 0.4), and
    ``attention_ap`` that of the mask the dev stage selects on (decisive: 0.7, 0.9)."""
    import convex_attention.paper.experiment as experiment

    aps = {"lesion": (0.2, 0.4), "decisive": (0.7, 0.9)}
    monkeypatch.setattr(experiment, "_train_one", lambda *a: {"model": "m", "threshold": 0.5, "best_epoch": 1})
    monkeypatch.setattr(experiment, "_evaluate", lambda *a, **k: {"auc": 0.9, "bacc": 0.8, "delta_auc_shuffled": 0})
    monkeypatch.setattr(experiment, "_dev_ap", lambda config, model, dataset, indices, upsamplings, device: {
        f"ap_{m}_{u}_L{k}": v for m, values in aps.items() for u in upsamplings for k, v in enumerate(values)})
    config = _dev_config()
    rows = experiment._dev_candidates(config, config.variants(), {"train": None, "val": None, "dev": None},
                                      {"lesion": [0], "decisive": [1]}, "decisive", str(tmp_path), "cpu", False,
                                      lambda *a: None)
    assert rows and all(r["attention_ap_lesion"] == pytest.approx(0.3) for r in rows)
    assert all(r["attention_ap_decisive"] == pytest.approx(0.8) == r["attention_ap"] for r in rows)
    assert all((r["ap_lesion_L1"], r["ap_decisive_L0"]) == (0.4, 0.7) for r in rows)


def test_ca_rev210_run_experiment_itself_refuses_a_dev_folder_that_holds_a_dev_stage(tmp_path, monkeypatch):
    import convex_attention.paper.experiment as experiment
    from convex_attention.paper.protocol import DevFolderExists

    monkeypatch.setattr(experiment, "run_dev", lambda *a, **k: pytest.fail("the dev stage ran"))
    (tmp_path / "out" / "dev").mkdir(parents=True)
    (tmp_path / "out" / "dev" / "proposed_variants.json").write_text("{}")
    with pytest.raises(DevFolderExists, match="proposed_variants.json"):
        run_experiment(_tiny_config(), str(tmp_path / "out"), stage="dev", ledger_path=str(tmp_path / "ledger.json"))


def test_ca_rev210_each_mask_s_ap_figure_draws_that_mask_s_chance_line(tmp_path, monkeypatch):
    import convex_attention.paper.experiment as experiment
    from convex_attention.paper.explain_metrics import METRIC_NAMES

    drawn = {}
    monkeypatch.setattr(experiment, "plot_metric_summary", lambda rows, path, chance, **k: drawn.update(
        {os.path.basename(path): chance}))
    monkeypatch.setattr(experiment, "test_report", lambda *a: "report")
    config = _tiny_config(seeds=(0,))
    gathered = experiment._TestResults(
        runs=[{"condition": "c", "test_set": "test", "model": "softmax", "seed": 0}],
        seed_means=[{**_group_mean("softmax", "attention", 0, 0, 0.5), "mask": mask,
                     **{f"{m}_mean": 0.5 for m in METRIC_NAMES}} for mask in ("lesion", "decisive")],
        conditions=[{"condition": "c", "compared": ["softmax"], "validity": []}],
        chance={("c", "test", "lesion"): 0.1, ("c", "test", "decisive"): 0.6})
    experiment._write_test(config, Variants(config.variants()[0], (0.3,)), {}, gathered, str(tmp_path), "cpu",
                           lambda *a: None, {})
    assert drawn == {"explain_ap_decisive.png": {("c", "test"): 0.6}, "explain_ap_lesion.png": {("c", "test"): 0.1}}


# ---- ca_rev227 (results_format.md audit): pandas and dev_runs.csv's boolean variant column


def test_ca_rev227_committed_dev_runs_learn_temperature_needs_a_boolean_dtype():
    """dev_runs.csv holds the plain CNN's rows with their variant columns empty (results_format.md), so plain
    pd.read_csv gives learn_temperature as object (Python bools beside float NaN); dtype "boolean" reads it as
    the nullable booleans it is, <NA> in the plain CNN's rows."""
    pd = pytest.importorskip("pandas")
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "results" / "brightest-cprime-dev-cpu" / "dev_runs.csv"
    plain = pd.read_csv(path)
    assert plain["learn_temperature"].dtype == object
    typed = pd.read_csv(path, dtype={"learn_temperature": "boolean"})
    assert typed["learn_temperature"].dtype == "boolean"
    assert typed.loc[typed["method"] == "plain_cnn", "learn_temperature"].isna().all()
    assert typed.loc[typed["method"] != "plain_cnn", "learn_temperature"].notna().all()


# ---- ca_rev231 (experiment.md audit): the headline recomputed from the committed brightest run


def test_ca_rev231_the_committed_headline_picks_among_every_compared_models_24_post_hoc_maps():
    """experiment.md's headline: on the test split, decisive mask, pixel protocol, each consistent-attention
    model's best level against the best post-hoc map of every compared model (5 methods, GradCAM at 2 levels, on
    4 models, the plain CNN included: 24 maps), paired by seed. _headline on the committed explain_summary.csv
    and explain_per_seed.csv gives the doc's numbers; dropping the plain CNN from the compared models moves the
    lesion mask's best map (DeepLIFT on the plain CNN) off it."""
    pd = pytest.importorskip("pandas")
    from pathlib import Path

    from convex_attention.paper.experiment import _headline

    folder = Path(__file__).resolve().parents[1] / "docs" / "results" / "brightest-cprime-test-cpu"
    summary = pd.read_csv(folder / "explain_summary.csv").to_dict("records")
    seed_means = pd.read_csv(folder / "explain_per_seed.csv").to_dict("records")
    everyone = {"difficulty0.3": ["softmax", "learned_dual", "exact", "plain_cnn"]}

    def entry(compared, mask, test_set="test"):
        [h] = [h for h in _headline(summary, seed_means, compared)
               if (h["test_set"], h["mask"], h["resolution"]) == (test_set, mask, "pixel")]
        return h

    h = entry(everyone, "decisive")
    assert h["candidates"]["posthoc"] == 24 and h["candidates"]["attention"] == 6
    assert (h["posthoc"]["model"], h["posthoc"]["method"]) == ("exact", "integrated_gradients")
    assert h["posthoc"]["ap_mean"] == pytest.approx(0.600, abs=5e-4)
    assert set(h["by_model"]) == {"softmax", "learned_dual", "exact"}  # the plain CNN has no attention
    for model, (diff, half) in {"exact": (-0.297, 0.139), "learned_dual": (-0.281, 0.054),
                                "softmax": (-0.290, 0.122)}.items():
        got = h["by_model"][model]
        assert got["level"] == 1 and got["seeds"] == 5
        assert (got["difference_mean"], got["difference_ci95"]) == (pytest.approx(diff, abs=5e-4),
                                                                    pytest.approx(half, abs=5e-4))
    lesion = entry(everyone, "lesion")
    assert (lesion["posthoc"]["model"], lesion["posthoc"]["method"]) == ("plain_cnn", "deeplift")
    assert lesion["by_model"]["exact"]["difference_mean"] == pytest.approx(-0.473, abs=5e-4)
    assert lesion["by_model"]["learned_dual"]["difference_ci95"] == pytest.approx(0.085, abs=5e-4)
    held = entry(everyone, "decisive", "heldout_mottled")
    assert held["by_model"]["exact"]["difference_mean"] == pytest.approx(-0.264, abs=5e-4)
    assert held["by_model"]["learned_dual"]["difference_mean"] == pytest.approx(-0.265, abs=5e-4)
    without_plain = entry({"difficulty0.3": ["softmax", "learned_dual", "exact"]}, "lesion")
    assert without_plain["candidates"]["posthoc"] == 18 and without_plain["posthoc"]["model"] != "plain_cnn"


# ---- accuracy differences paired by seed (after ca_rev231): every pair of models, in the report

def test_accuracy_differences_pair_every_two_models_by_seed_on_the_committed_brightest_run():
    """The committed brightest test run, read from runs.csv: the learned dual's AUC on the unseen
    mimic type is 0.053 ± 0.022 below exact's paired by seed (docs/experiment.md), which the two
    models' own intervals (0.816 ± 0.026, 0.869 ± 0.037) overlapping had hidden."""
    from pathlib import Path

    from convex_attention.paper.experiment import PAIRED_ACCURACY, _accuracy_differences

    runs = read_csv_rows(Path(__file__).resolve().parents[1] / "docs" / "results" / "brightest-cprime-test-cpu"
                         / "runs.csv")
    rows = _accuracy_differences(runs)
    # 2 test sets x 6 pairs of the 4 models x 2 metrics, the later model minus the earlier
    assert len(rows) == 2 * 6 * len(PAIRED_ACCURACY)
    found = {(r["test_set"], r["metric"], r["model"], r["minus"]): r for r in rows}
    held = found[("heldout_mottled", "auc", "exact", "learned_dual")]
    assert (round(held["difference_mean"], 3), round(held["difference_ci95"], 3)) == (0.053, 0.022)
    assert (held["seeds"], held["seeds_nan"]) == (5, 0)
    same = found[("test", "auc", "exact", "softmax")]
    assert (round(same["difference_mean"], 3), round(same["difference_ci95"], 3)) == (0.002, 0.027)
    # by hand: the seeds' differences, Student t
    by_seed = {m: {r["seed"]: float(r["auc"]) for r in runs if r["test_set"] == "heldout_mottled" and r["model"] == m}
               for m in ("exact", "learned_dual")}
    mean, half = mean_ci([by_seed["exact"][s] - by_seed["learned_dual"][s] for s in by_seed["exact"]])
    assert math.isclose(held["difference_mean"], mean) and math.isclose(held["difference_ci95"], half)


def test_accuracy_differences_pair_only_the_seeds_both_models_have_and_count_nan():
    from convex_attention.paper.experiment import _accuracy_differences

    runs = [{"condition": "c", "test_set": "t", "model": m, "seed": s, "auc": v, "bacc": b}
            for m, s, v, b in (("a", 0, 0.8, 0.7), ("a", 1, 0.9, math.nan), ("a", 2, 0.7, 0.6),
                               ("b", 0, 0.6, 0.5), ("b", 1, 0.6, 0.5))]
    auc, bacc = _accuracy_differences(runs)
    assert (auc["model"], auc["minus"], auc["metric"]) == ("b", "a", "auc")
    assert auc["seeds"] == 2 and math.isclose(auc["difference_mean"], -0.25)  # seed 2: a only
    assert bacc["seeds"] == 2 and bacc["seeds_nan"] == 1 and math.isclose(bacc["difference_mean"], -0.2)


def test_accuracy_differences_read_an_empty_value_as_nan():
    """A runs.csv read back holds an empty AUC where a test set had one class: NaN, counted, not
    a crash."""
    from convex_attention.paper.experiment import _accuracy_differences

    runs = [{"condition": "c", "test_set": "t", "model": m, "seed": s, "auc": v, "bacc": "0.5"}
            for m, s, v in (("a", 0, "0.8"), ("a", 1, ""), ("b", 0, "0.6"), ("b", 1, "0.7"))]
    auc = _accuracy_differences(runs)[0]
    assert (auc["seeds"], auc["seeds_nan"]) == (2, 1) and math.isclose(auc["difference_mean"], -0.2)


# ---- ca_rev235 (mutation review of the 42nd session's code): accuracy differences, None values and _write_test


def test_ca_rev235_accuracy_differences_read_a_missing_value_as_nan():
    """A run gathered in memory may hold None for an AUC it could not compute: NaN, counted, not a
    TypeError."""
    from convex_attention.paper.experiment import _accuracy_differences, _number

    assert math.isnan(_number(None)) and math.isnan(_number("")) and _number("0.25") == 0.25
    runs = [{"condition": "c", "test_set": "t", "model": m, "seed": s, "auc": v, "bacc": 0.5}
            for m, s, v in (("a", 0, 0.8), ("a", 1, None), ("b", 0, 0.6), ("b", 1, 0.7))]
    auc = _accuracy_differences(runs)[0]
    assert (auc["seeds"], auc["seeds_nan"]) == (2, 1) and math.isclose(auc["difference_mean"], -0.2)


def test_ca_rev235_write_test_writes_reports_and_saves_the_accuracy_differences(tmp_path, monkeypatch):
    """_write_test writes accuracy_differences.csv, hands the same rows to test_report and saves them in
    experiment.json (the slow end-to-end test checks this too; this one runs in the quick suite)."""
    import convex_attention.paper.experiment as experiment
    from convex_attention.paper.explain_metrics import METRIC_NAMES

    reported = []
    monkeypatch.setattr(experiment, "plot_metric_summary", lambda *a, **k: None)
    monkeypatch.setattr(experiment, "test_report", lambda *a: reported.append(a[-1]) or "report")
    config = _tiny_config(seeds=(0, 1))
    gathered = experiment._TestResults(
        runs=[{"condition": "c", "test_set": "test", "model": m, "seed": s, "auc": auc, "bacc": 0.5}
              for m, s, auc in (("softmax", 0, 0.9), ("softmax", 1, 0.8), ("plain_cnn", 0, 0.7),
                                ("plain_cnn", 1, 0.7))],
        seed_means=[{**_group_mean("softmax", "attention", 0, 0, 0.5), "mask": "lesion",
                     **{f"{m}_mean": 0.5 for m in METRIC_NAMES}}],
        conditions=[{"condition": "c", "compared": ["softmax"], "validity": []}],
        chance={("c", "test", "lesion"): 0.1})
    experiment._write_test(config, Variants(config.variants()[0], (0.3,)), {}, gathered, str(tmp_path), "cpu",
                           lambda *a: None, {})
    rows = read_csv_rows(os.path.join(str(tmp_path), "accuracy_differences.csv"))
    assert [(r["metric"], r["model"], r["minus"], r["seeds"]) for r in rows] == [
        ("auc", "plain_cnn", "softmax", "2"), ("bacc", "plain_cnn", "softmax", "2")]
    assert math.isclose(float(rows[0]["difference_mean"]), -0.15)
    saved = read_json(os.path.join(str(tmp_path), "experiment.json"))["accuracy_differences"]
    assert [d["metric"] for d in saved] == ["auc", "bacc"] and math.isclose(saved[0]["difference_mean"], -0.15)
    assert reported == [saved]
