"""The paper's commands (train, explain, experiment) fail like commands: every bad input is
a usage error (exit 2, no traceback) raised before any work, with a message naming the
option; nothing they load can run code; ``train --resume`` restores the stored settings."""
import argparse
import csv
import os
import pickle

import numpy as np
import pytest
import torch
from helpers import read_bytes, read_csv_rows, run_cli, tiny_checkpoint

from convex_attention import cli
from convex_attention.paper.models import AttentionUNet, load_model, read_checkpoint, save_checkpoint
from convex_attention.paper.models.checkpoint import FORMAT

run = run_cli  # (argv, capsys) -> (exit code, stdout, stderr)


def assert_usage_error(code, err, *words):
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "error:" in last, err
    for w in words:
        assert w in last, (w, last)


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if training, explaining or the experiment starts."""
    import convex_attention.paper.experiment as experiment
    import convex_attention.paper.explain as explain
    import convex_attention.paper.train as train

    def refuse(*a, **k):
        raise AssertionError("work started before the inputs were checked")

    monkeypatch.setattr(train, "train", refuse)
    monkeypatch.setattr(explain, "explain_models", refuse)
    monkeypatch.setattr(experiment, "run_experiment", refuse)



# ----------------------------------------------------------------------------- help


def _subparsers():
    parser = cli.build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: action.choices[name] for name in ("train", "explain", "experiment")}


def test_every_option_has_help():  # and its default, once: tests/test_cli_conventions.py
    for name, sub in _subparsers().items():
        text = sub.format_help()
        for action in sub._actions:
            assert action.help, (name, action.option_strings)
        assert "--out" in text and "Traceback" not in text


def test_help_shows_the_dataclass_defaults():
    text = _subparsers()["train"].format_help()
    assert "(default: 128)" in text and "(default: 0.001)" in text and "(default: 32)" in text


def test_experiment_help_offers_only_the_data_its_protocol_splits():
    def data_help(command):
        (action,) = [a for a in _subparsers()[command]._actions if a.dest == "data"]
        return action.help

    assert "brats: BraTS" in data_help("train") and "one of synthetic, synthetic-blobs, synthetic-brightest, brats" \
        in data_help("train")
    text = data_help("experiment")
    assert "one of synthetic, synthetic-blobs, synthetic-brightest (default" in text and "brats:" not in text
    assert "synthetic-brightest: one lesion per image" in text  # the synthetic sources keep their descriptions


# ----------------------------------------------------------------------------- train


TRAIN_BAD = [
    (["--epochs", "0"], "--epochs"), (["--epochs", "-1"], "--epochs"), (["--batch-size", "0"], "--batch-size"),
    (["--n-train", "0"], "--n-train"), (["--n-val", "0"], "--n-val"), (["--channels", "0"], "--channels"),
    (["--width", "0"], "--width"), (["--image-size", "40"], "pooling stack"), (["--image-size", "0"], "--image-size"),
    (["--temperature", "0"], "--temperature"), (["--temperature", "-1"], "--temperature"),
    (["--temperature", "inf"], "--temperature"), (["--temperature", "nan"], "--temperature"),
    (["--alpha", "-1"], "--alpha"), (["--alpha", "inf"], "--alpha"), (["--lr", "0"], "--lr"),
    (["--lr", "nan"], "--lr"), (["--weight-decay", "-1"], "--weight-decay"), (["--difficulty", "2"], "--difficulty"),
    (["--attention-blocks", "2", "4"], "--attention-blocks"), (["--seed", "-1"], "--seed"),
    (["--workers", "-1"], "--workers"), (["--device", "tpu"], "--device"), (["--device", "cuda:x"], "--device"),
    (["--data-seed", "-5"], "--data-seed"),
    # sizes whose tensors could never be allocated (before: the run started, and failed inside)
    (["--n-train", "10000000", "--image-size", "8192"], "--n-train"),
    (["--n-val", "5000", "--image-size", "1024"], "pixels per channel and set"),
    (["--n-val", "1000004"], "from 1 to 1000003"),
    (["--batch-size", "100000", "--width", "1024", "--image-size", "128", "--n-train", "16", "--n-val", "8"],
     "first activation"),
    (["--temperature", "1e308"], "--temperature"),  # before: OverflowError (the sum of the levels' temperatures)
    (["--seed", str(2 ** 70)], "--seed"),
    # the BraTS settings: for brats only (they would be ignored), and a split that leaves training patients
    (["--normalisation", "dataset"], "applies to data 'brats' only"), (["--cache-dir", "c"], "--cache-dir"),
    (["--min-tumour-area", "10"], "--min-tumour-area"), (["--val-fraction", "0.95"], "--val-fraction"),
    (["--normalisation", "global"], "--normalisation"), (["--val-fraction", "0.5"], "applies to data 'brats' only"),
    # a synthetic source generates its images: a data root would be ignored, and recorded as trained on files
    (["--data-root", "r"], "--data-root: data_root applies to data read from files (brats, folder) only"),
    (["--data", "synthetic-blobs", "--data-root", "r"], "the data 'synthetic-blobs' is generated"),
]


@pytest.mark.parametrize("argv,words", TRAIN_BAD)
def test_train_usage_errors_before_work(argv, words, tmp_path, capsys, no_work):
    out = str(tmp_path / "run")
    code, _, err = run(["train", *argv, "--out", out], capsys)
    assert_usage_error(code, err, words)
    assert not os.path.exists(out)


def test_cuda_without_cuda_is_a_usage_error(tmp_path, capsys, monkeypatch, no_work):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in (["train", "--device", "cuda"], ["train", "--device", "cuda:0"], ["experiment", "--device", "cuda"],
                 ["explain", "--checkpoints", "a=x.pt", "--device", "cuda"]):
        code, _, err = run([*argv, "--out", str(tmp_path / "o")], capsys)
        assert_usage_error(code, err, "--device", "CUDA is not available")


def _unwritable(tmp_path) -> str:
    if os.geteuid() == 0:  # root writes anywhere a permission allows nothing: use a path no one can create
        if not os.path.isdir("/proc/self"):
            pytest.skip("needs /proc to make an unwritable path as root")
        return "/proc/convex-attention-no-such-folder/out"
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    return str(ro / "out")


@pytest.mark.parametrize("command", [["train"], ["experiment", "--quick"], ["explain", "--checkpoints", "a=x.pt"]])
def test_out_that_is_a_file_or_unwritable(command, tmp_path, capsys, no_work):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, _, err = run([*command, "--out", str(a_file)], capsys)
    assert_usage_error(code, err, "--out", "is a file")
    code, _, err = run([*command, "--out", _unwritable(tmp_path)], capsys)
    assert_usage_error(code, err, "--out", "not a writable folder")


def test_resume_from_a_missing_corrupt_or_foreign_checkpoint(tmp_path, capsys, no_work):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    good = tiny_checkpoint(tmp_path / "good" / "last.pt")
    (tmp_path / "trunc.pt").write_bytes(read_bytes(good)[:2000])
    for path, words in ((tmp_path / "missing.pt", "does not exist"), (junk, "not a convex-attention checkpoint"),
                        (tmp_path / "foreign.pt", "not a convex-attention checkpoint"),
                        (tmp_path / "trunc.pt", "not a convex-attention checkpoint"), (tmp_path, "not a file")):
        code, _, err = run(["train", "--resume", str(path)], capsys)
        assert_usage_error(code, err, "--resume", words)


def test_resume_restores_the_stored_settings_and_applies_explicit_options(tmp_path):
    from convex_attention.cli.paper import train_config_from_args

    path = tiny_checkpoint(tmp_path / "runs" / "x" / "last.pt", epoch=1, epochs=2, method="exact", lr=3e-3)
    parser = cli.build_parser()
    config, state = train_config_from_args(parser.parse_args(["train", "--resume", path]))
    assert config.model.method == "exact" and config.model.width == 4 and config.lr == 3e-3 and config.epochs == 2
    assert config.n_train == 16 and config.out == os.path.dirname(os.path.abspath(path)) and state["epoch"] == 1
    config, _ = train_config_from_args(parser.parse_args(["train", "--resume", path, "--epochs", "5", "--lr", "0.01",
                                                          "--width", "4", "--out", str(tmp_path / "y")]))
    assert config.epochs == 5 and config.lr == 0.01 and config.model.width == 4 and config.out == str(tmp_path / "y")
    assert config.model.method == "exact"


@pytest.mark.parametrize("argv,words", [(["--width", "8"], "--width"), (["--method", "softmax"], "--method"),
                                        (["--norm", "group"], "--norm"), (["--image-size", "64"], "--image-size"),
                                        (["--attention-blocks", "2", "3"], "--attention-blocks"),
                                        (["--channels", "3"], "--channels")])
def test_resume_refuses_another_architecture(argv, words, tmp_path, capsys, no_work):
    path = tiny_checkpoint(tmp_path / "x" / "last.pt", epoch=1, epochs=2)
    code, _, err = run(["train", "--resume", path, *argv], capsys)
    assert_usage_error(code, err, words, "differs from the checkpoint", "keeps its architecture")


@pytest.mark.parametrize("argv,words", [(["--difficulty", "0.3"], "--difficulty"), (["--n-val", "12"], "--n-val"),
                                        (["--data-seed", "7"], "--data-seed"), (["--seed", "3"], "--seed"),
                                        (["--data", "synthetic-blobs"], "--data")])
def test_resume_refuses_other_data(argv, words, tmp_path, capsys, no_work):
    """A resumed run's epochs are scored, and best.pt chosen, on one validation set."""
    path = tiny_checkpoint(tmp_path / "x" / "last.pt", epoch=1, epochs=2)
    code, _, err = run(["train", "--resume", path, *argv], capsys)
    assert_usage_error(code, err, words, "the checkpoint's is", "keeps its data")


def test_the_data_folders_are_recorded_absolute(tmp_path, monkeypatch):
    """explain and --resume read them from the checkpoint, from whatever folder they run in."""
    from convex_attention.cli.paper import train_config_from_args

    monkeypatch.chdir(tmp_path)
    args = cli.build_parser().parse_args(["train", "--data", "brats", "--data-root", "brats", "--cache-dir", "c"])
    config, _ = train_config_from_args(args)
    assert config.data_root == str(tmp_path / "brats") and config.cache_dir == str(tmp_path / "c")


def test_resume_may_change_the_training_images_but_not_the_seed(tmp_path, capsys, no_work):
    """A resumed run draws from the checkpoint's random state, and its weights came from the
    checkpoint's seed: another --seed (data pinned by --data-seed) was recorded in its files and
    used nowhere (a review's near-miss)."""
    from convex_attention.cli.paper import train_config_from_args

    path = tiny_checkpoint(tmp_path / "x" / "last.pt", epoch=1, epochs=2, data_seed=5)
    parser = cli.build_parser()
    config, _ = train_config_from_args(parser.parse_args(["train", "--resume", path, "--n-train", "32"]))
    assert config.n_train == 32 and config.data_seed == 5
    same, _ = train_config_from_args(parser.parse_args(["train", "--resume", path, "--seed", str(config.seed)]))
    assert same.seed == config.seed
    code, _, err = run(["train", "--resume", path, "--seed", str(config.seed + 3)], capsys)
    assert_usage_error(code, err, "--seed", "keeps its seed")


def test_resume_of_a_finished_run_says_what_to_do(tmp_path, capsys, no_work):
    path = tiny_checkpoint(tmp_path / "x" / "last.pt", epoch=2, epochs=2)
    code, _, err = run(["train", "--resume", path], capsys)
    assert_usage_error(code, err, "--resume", "nothing to do", "--epochs greater than 2")


def _tampered(path, edit):
    """Rewrite the checkpoint at ``path`` with its weights changed by ``edit(weights)``."""
    state = read_checkpoint(path)
    weights = {k: v.clone() for k, v in state["model"].items()}
    edit(weights)
    torch.save({**state, "model": weights}, path)
    return path


def _first_conv(weights):
    return next(k for k, v in weights.items() if v.dim() == 4)


def test_resume_refuses_a_checkpoint_whose_weights_are_not_finite(tmp_path, capsys, no_work):
    path = _tampered(tiny_checkpoint(tmp_path / "x" / "last.pt", epoch=1, epochs=2),
                     lambda w: w[_first_conv(w)].view(-1)[0].fill_(float("nan")))
    code, _, err = run(["train", "--resume", path], capsys)
    assert_usage_error(code, err, "--resume", "not all finite", "diverged")
    assert len(err.strip().splitlines()) == 1


def _checkpoint_with_optimiser_state(tmp_path, spoil) -> str:
    """``x/last.pt`` of a tiny model after one Adam step, its optimiser state spoilt by ``spoil``."""
    import convex_attention.paper.models as models
    from convex_attention.paper.config import TrainConfig

    config = TrainConfig.build(image_size=32, width=4, embed_channels=8, device="cpu")
    model = models.AttentionUNet(config=config.model)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4, 32, 32)).logits.sum().backward()
    opt.step()
    spoil(opt.state)
    return save_checkpoint(str(tmp_path / "x" / "last.pt"), model, opt, epoch=1,
                           extra={"train_config": {**config.to_dict(), "epochs": 2}})


def test_resume_refuses_an_optimiser_state_that_is_not_finite(tmp_path, capsys, no_work):
    """Before: the weights were finite, so the checkpoint loaded; the first Adam step made
    them NaN, and the message blamed the learning rate."""
    def nan_moments(state):
        for entry in state.values():
            entry["exp_avg_sq"].fill_(float("nan"))

    path = _checkpoint_with_optimiser_state(tmp_path, nan_moments)
    code, _, err = run(["train", "--resume", path], capsys)
    assert_usage_error(code, err, "--resume", "optimiser state that is not all finite", "exp_avg_sq")


def test_resume_refuses_weights_of_other_shapes_and_a_plain_cnn_as_usage_errors(tmp_path, capsys, no_work):
    """Before: the mismatch surfaced inside training, as a traceback."""
    from convex_attention.paper.models import ModelConfig, PlainCNN

    path = _tampered(tiny_checkpoint(tmp_path / "x" / "last.pt", epoch=1, epochs=2),
                     lambda w: w.__setitem__(_first_conv(w), torch.zeros(1, 1, 3, 3)))
    code, _, err = run(["train", "--resume", path], capsys)
    assert_usage_error(code, err, "--resume", "weights do not fit its own configuration")
    state = read_checkpoint(tiny_checkpoint(tmp_path / "y" / "last.pt", epoch=1, epochs=2))
    plain = save_checkpoint(str(tmp_path / "p" / "last.pt"), PlainCNN(config=ModelConfig.from_dict(state["config"])),
                            epoch=1, extra={"train_config": state["train_config"]})
    code, _, err = run(["train", "--resume", plain], capsys)
    assert_usage_error(code, err, "--resume", "plain CNN")


def test_explain_refuses_a_checkpoint_whose_weights_are_not_finite(tmp_path, capsys, no_work):
    path = _tampered(tiny_checkpoint(tmp_path / "a" / "best.pt"),
                     lambda w: [v.fill_(float("nan")) for v in w.values() if v.is_floating_point()])
    code, _, err = run(["explain", "--checkpoints", f"m={path}", "--out", str(tmp_path / "o")], capsys)
    assert_usage_error(code, err, "--checkpoints", "not all finite")


def test_explain_of_a_model_whose_outputs_are_not_finite_fails_and_reports_no_number(tmp_path, capsys):
    """Finite weights whose logits overflow: the run fails (exit 1, one line), and no
    explain.csv with plausible-looking metrics is written."""
    def overflow(weights):
        weights["classifier.weight"].fill_(3e38)
        weights["classifier.bias"].fill_(torch.finfo(torch.float32).max)

    path = _tampered(tiny_checkpoint(tmp_path / "a" / "best.pt"), overflow)
    out = tmp_path / "o"
    code, _, err = run(["explain", "--checkpoints", f"m={path}", "--baseline-model", "none", "--n-images", "2",
                        "--no-progress", "--out", str(out)], capsys)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "model 'm'" in err and "logits" in err and "not scored" in err
    assert not (out / "explain.csv").exists()


@pytest.mark.parametrize("lr_may_help", [True, False])
def test_diverged_training_says_what_diverged_and_names_lr_only_where_it_helps(tmp_path, capsys, monkeypatch,
                                                                                lr_may_help):
    import convex_attention.paper.train as train_module
    from convex_attention.paper.train import TrainingDiverged

    def diverge(*args, **kwargs):
        raise TrainingDiverged("the weights became NaN or Inf at epoch 2, step 3", lr_may_help, 1e-3)

    monkeypatch.setattr(train_module, "train", diverge)
    monkeypatch.setattr(train_module, "build_checked_datasets", lambda config: None)
    code, _, err = run(["train", "--out", str(tmp_path / "t"), "--lr", "0.001"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "training diverged: the weights became NaN or Inf at epoch 2, step 3" in err
    assert ("lower --lr (now 0.001)" in err) == lr_may_help


def test_experiment_with_a_diverged_model_fails_without_advice_it_cannot_take(tmp_path, capsys, monkeypatch):
    """The experiment has no --lr option: its message says what diverged, no more."""
    import convex_attention.paper.experiment as experiment
    from convex_attention.paper.train import TrainingDiverged

    def diverge(*args, **kwargs):
        raise TrainingDiverged("the weights became NaN or Inf at epoch 2, step 3 (method exact)", True, 1e-3)

    monkeypatch.setattr(experiment, "run_experiment", diverge)
    code, _, err = run(["experiment", "--quick", "--out", str(tmp_path / "e")], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "a model's training diverged: the weights became NaN or Inf at epoch 2, step 3 (method exact)" in err
    assert "--lr" not in err and "learning rate" not in err


@pytest.mark.parametrize("error", ["weights", "outputs"])
def test_experiment_refuses_to_score_a_model_with_non_finite_weights_or_outputs(tmp_path, capsys, monkeypatch, error):
    import convex_attention.paper.experiment as experiment
    from convex_attention.paper.models import NonFiniteOutput, NonFiniteWeights

    def fail(*args, **kwargs):
        if error == "weights":
            raise NonFiniteWeights("'runs/x/best.pt' holds weights that are not all finite: w (3 of 9 values NaN or "
                                   "Inf); the run that saved it diverged")
        raise NonFiniteOutput("the model's logits (images [0] of the batch) hold NaN or Inf: its predictions are "
                              "not scored")

    monkeypatch.setattr(experiment, "run_experiment", fail)
    code, _, err = run(["experiment", "--quick", "--out", str(tmp_path / "e")], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert ("not all finite" if error == "weights" else "not scored") in err


@pytest.mark.slow
def test_train_resume_with_no_other_flag_continues_the_run(tmp_path, capsys):
    path = tiny_checkpoint(tmp_path / "runs" / "x" / "last.pt", epoch=1, epochs=2, method="exact", difficulty=0.0)
    code, out, err = run(["train", "--resume", path], capsys)
    assert code == 0, err
    state = read_checkpoint(path)
    assert state["epoch"] == 2 and state["train_config"]["model"]["method"] == "exact"
    with open(tmp_path / "runs" / "x" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["2"]
    assert "train:" in out
    code, _, err = run(["train", "--resume", path], capsys)  # now finished
    assert code == 2 and "nothing to do" in err


def test_quiet_silences_info_lines(tmp_path, capsys, monkeypatch):
    import convex_attention.paper.train as train_module

    def fake_train(config, datasets=None, log=print, **_):
        log("[exact] epoch 1: an info line")
        return {"metrics": [{"val_auc": 0.5, "val_balanced_acc": 0.5}], "best_epoch": 1}

    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.setattr(train_module, "build_checked_datasets", lambda config: (None, None))
    args = ["train", "--out", str(tmp_path / "o"), "--device", "cpu"]
    code, out, _ = run(args, capsys)
    assert code == 0 and "an info line" in out and "train:" in out
    code, out, _ = run(args + ["--quiet"], capsys)
    assert code == 0 and out == ""


# ----------------------------------------------------------------------------- explain


def test_explain_refuses_duplicate_names_and_bad_specs(tmp_path, capsys, no_work):
    a = tiny_checkpoint(tmp_path / "a" / "best.pt")
    b = tiny_checkpoint(tmp_path / "b" / "best.pt", method="exact")
    for specs, words in (([f"softmax={a}", f"softmax={b}"], "given twice"), ([a], "NAME=PATH"),
                         ([f"={a}"], "NAME=PATH"), (["x="], "NAME=PATH"), ([f"none={a}"], "word for no model")):
        code, _, err = run(["explain", "--checkpoints", *specs, "--out", str(tmp_path / "o")], capsys)
        assert_usage_error(code, err, "--checkpoints", words)


@pytest.mark.parametrize("argv,words", [(["--n-images", "0"], "--n-images"), (["--n-images", "-2"], "--n-images"),
                                        (["--n-images", str(10 ** 15)], "from 1 to 100000"),
                                        (["--batch-size", str(2 ** 62)], "from 1 to 100000"),
                                        (["--batch-size", "0"], "--batch-size"), (["--device", "tpu"], "--device"),
                                        (["--baseline-model", "plain"], "--baseline-model"),
                                        (["--baseline-model", "none", "softmax"], "'none' (no model) stands alone"),
                                        (["--baseline-model", "softmax", "softmax"], "named more than once")])
def test_explain_usage_errors(argv, words, tmp_path, capsys, no_work):
    a = tiny_checkpoint(tmp_path / "a" / "best.pt")
    code, _, err = run(["explain", "--checkpoints", f"softmax={a}", *argv, "--out", str(tmp_path / "o")], capsys)
    assert_usage_error(code, err, words)


def test_explain_refuses_checkpoints_trained_on_other_data(tmp_path, capsys, no_work):
    a = tiny_checkpoint(tmp_path / "a" / "best.pt", difficulty=0.5)
    b = tiny_checkpoint(tmp_path / "b" / "best.pt", difficulty=0.3, method="exact")
    c = tiny_checkpoint(tmp_path / "c" / "best.pt", data_seed=7, method="exact")
    # a BraTS checkpoint records settings a synthetic one has not: compared either way round
    d = tiny_checkpoint(tmp_path / "d" / "best.pt", data="brats", data_root=str(tmp_path), method="exact")
    for other, words in ((b, "difficulty 0.3 vs 0.5"), (c, "data_seed 7 vs 0"), (d, "'brats' vs 'synthetic'")):
        code, _, err = run(["explain", "--checkpoints", f"softmax={a}", f"exact={other}", "--out",
                            str(tmp_path / "o")], capsys)
        assert_usage_error(code, err, "trained on other data", words)


def test_explain_refuses_corrupt_foreign_and_unconfigured_checkpoints(tmp_path, capsys, no_work):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    bare = save_checkpoint(str(tmp_path / "bare" / "m.pt"), AttentionUNet(method="exact", width=4, image_size=32))
    for path, words in ((tmp_path / "junk.pt", "not a convex-attention checkpoint"),
                        (tmp_path / "none.pt", "does not exist"), (bare, "no training configuration")):
        code, _, err = run(["explain", "--checkpoints", f"m={path}", "--out", str(tmp_path / "o")], capsys)
        assert_usage_error(code, err, "--checkpoints", words)


def test_explain_without_lesion_images_is_a_usage_error(tmp_path, capsys, no_work):
    root = tmp_path / "data"
    write_folder(str(root / "train"), fmt="npy")
    write_folder(str(root / "val"), fmt="npy", seed=100)  # no masks: nothing to score against
    a = tiny_checkpoint(tmp_path / "a" / "best.pt", image_size=16, data="folder", data_root=str(root))
    code, _, err = run(["explain", "--checkpoints", f"softmax={a}", "--out", str(tmp_path / "o")], capsys)
    assert_usage_error(code, err, "no validation image with a lesion")


@pytest.mark.slow
def test_explain_command_end_to_end_and_quiet(tmp_path, capsys):
    a = tiny_checkpoint(tmp_path / "a" / "best.pt")
    b = tiny_checkpoint(tmp_path / "b" / "best.pt", method="exact")
    out = tmp_path / "o"
    code, stdout, err = run(["explain", "--checkpoints", f"softmax={a}", f"exact={b}", "--n-images", "2",
                             "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    assert stdout == ""
    rows = read_csv_rows(out / "explain.csv")
    assert {r["model"] for r in rows} == {"softmax", "exact"} and len({r["image"] for r in rows}) == 2
    assert any(r["method"] == "deeplift" for r in rows)  # the baselines explain the model named softmax


# ----------------------------------------------------------------------------- train into a folder of a run

_SMALL_RUN = ["--image-size", "32", "--width", "4", "--n-train", "16", "--n-val", "8", "--batch-size", "8",
              "--device", "cpu", "--no-progress"]


def _earlier_run(folder):
    folder.mkdir(parents=True)
    for name in ("best.pt", "last.pt", "metrics.csv", "config.json"):
        (folder / name).write_text(f"the earlier run's {name}")
    (folder / "notes.txt").write_text("the user's notes")
    return {p.name: p.read_text() for p in folder.iterdir()}


def test_train_into_a_folder_of_an_earlier_run_needs_resume_or_overwrite(tmp_path, capsys, no_work):
    """Before: a new run into the --out of a finished one replaced its checkpoints and
    metrics without a word."""
    out = tmp_path / "run"
    before = _earlier_run(out)
    code, _, err = run(["train", *_SMALL_RUN, "--out", str(out)], capsys)
    assert_usage_error(code, err, "--out", "holds an earlier run", "--resume", "last.pt", "--overwrite")
    assert {p.name: p.read_text() for p in out.iterdir()} == before
    code, _, err = run(["train", *_SMALL_RUN, "--out", str(out), "--overwrite", "--resume", str(out / "last.pt")],
                       capsys)
    assert_usage_error(code, err, "--resume and --overwrite contradict")
    assert {p.name: p.read_text() for p in out.iterdir()} == before


def test_train_overwrite_replaces_the_earlier_run_and_nothing_else(tmp_path, capsys, monkeypatch):
    import convex_attention.paper.train as train_module

    out = tmp_path / "run"
    _earlier_run(out)
    seen = {}

    def fake_train(config, **kwargs):
        seen["files"] = sorted(p.name for p in out.iterdir())
        return {"metrics": []}

    monkeypatch.setattr(train_module, "train", fake_train)
    code, _, err = run(["train", *_SMALL_RUN, "--out", str(out), "--overwrite"], capsys)
    assert code == 0, err
    # the earlier checkpoints and metrics are gone before the run starts; config.json is the run's to rewrite
    assert seen["files"] == ["config.json", "notes.txt", "results.lock"]  # the lock: held while it runs
    assert (out / "notes.txt").read_text() == "the user's notes"


def test_overwrite_by_several_ranks_at_once_is_not_an_error(tmp_path, monkeypatch):
    """Under torchrun every rank checks the folder before the ranks meet: a file another
    rank removed first is no error."""
    from convex_attention.cli.paper import check_run_folder
    from convex_attention.paper.config import TrainConfig

    out = tmp_path / "run"
    _earlier_run(out)
    (out / "best.pt").unlink()  # removed by another rank after this one found it
    real = os.path.isfile
    monkeypatch.setattr(os.path, "isfile", lambda p: p.endswith("best.pt") or real(p))
    check_run_folder(TrainConfig(out=str(out)), argparse.Namespace(resume=None, overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "notes.txt"]


def test_train_resume_into_its_own_folder_needs_no_overwrite(tmp_path, capsys, monkeypatch):
    import convex_attention.paper.train as train_module

    path = tiny_checkpoint(tmp_path / "x" / "last.pt", epoch=1, epochs=2)
    monkeypatch.setattr(train_module, "train", lambda config, **kwargs: {"metrics": []})
    code, _, err = run(["train", "--resume", path, "--no-progress"], capsys)
    assert code == 0, err
    assert os.path.exists(path)


def _run_with_the_work_raising(command, exception, tmp_path, capsys, monkeypatch):
    """Run ``command`` (train, explain or experiment) on a small setting with its work
    (training, explaining, the experiment) raising ``exception``; returns ``run``'s
    ``(code, out, err)``."""
    import convex_attention.paper.experiment as experiment
    import convex_attention.paper.explain as explain
    import convex_attention.paper.train as train_module

    def raise_it(*args, **kwargs):
        raise exception

    monkeypatch.setattr(train_module, "train", raise_it)
    monkeypatch.setattr(explain, "explain_models", raise_it)
    monkeypatch.setattr(experiment, "run_experiment", raise_it)
    argv = {"train": ["train", *_SMALL_RUN, "--out", str(tmp_path / "t")],
            "explain": ["explain", "--checkpoints", f"m={tiny_checkpoint(tmp_path / 'a' / 'best.pt')}", "--out",
                        str(tmp_path / "o"), "--no-progress"],
            "experiment": ["experiment", "--quick", "--out", str(tmp_path / "e")]}[command]
    return run(argv, capsys)


@pytest.mark.parametrize("command", ["train", "explain", "experiment"])
@pytest.mark.parametrize("failure", [MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:116] data. "
                                                                 "DefaultCPUAllocator: can't allocate memory: you "
                                                                 "tried to allocate 1099511627776 bytes.\nmore"),
                                     RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")])
def test_an_allocation_failure_inside_a_run_is_one_line_exit_1(tmp_path, capsys, monkeypatch, command, failure):
    """Before: a tensor that could not be allocated mid-run ended in a traceback."""
    code, _, err = _run_with_the_work_raising(command, failure, tmp_path, capsys, monkeypatch)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"convex-attention {command}: error: memory ran out" in err and "--batch-size" in err


@pytest.mark.parametrize("command, words, absent", [
    ("train", "interrupted before an epoch finished: there is no ", "--resume"),
    ("experiment", "the stage did not finish and its results are incomplete", "--resume"),
    ("explain", "interrupted", "--resume"),
])
def test_ctrl_c_is_one_line_that_fits_the_command(tmp_path, capsys, monkeypatch, command, words, absent):
    """--resume is advised only by the command that has one."""
    code, _, err = _run_with_the_work_raising(command, KeyboardInterrupt(), tmp_path, capsys, monkeypatch)
    assert code == 130 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"convex-attention {command}: ") and words in err
    assert absent is None or absent not in err


def test_a_runtime_error_that_is_not_an_allocation_failure_is_not_disguised_as_one(tmp_path, capsys, monkeypatch):
    import convex_attention.paper.train as train_module

    def fail(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(train_module, "train", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["train", *_SMALL_RUN, "--out", str(tmp_path / "t")])


# ----------------------------------------------------------------------------- experiment


@pytest.mark.parametrize("argv,words", [(["--epochs", "0"], "--epochs"), (["--seeds", "0", "0"], "--seeds"),
                                        (["--seeds", "-1"], "--seeds"), (["--n-explain", "0"], "--n-explain"),
                                        (["--batch-size", "0"], "--batch-size"), (["--n-train", "0"], "--n-train"),
                                        (["--width", "0"], "--width"), (["--image-size", "40"], "pooling stack"),
                                        (["--device", "tpu"], "--device"),
                                        (["--n-test", "3000000"], "--n-test"),
                                        (["--n-dev", "900000", "--image-size", "64"], "pixels per channel and set"),
                                        (["--n-dev", "1000004"], "from 1 to 1000003"),
                                        (["--validity-images", "3000000"], "--validity-images"),
                                        (["--seeds", str(2 ** 64)], "--seeds"),
                                        # options the dev stage (the default) never reads
                                        (["--variants-sha256", "0" * 64], "--variants-sha256: only the test stage"),
                                        (["--force"], "--force: only the test stage"),
                                        (["--allow-rejected-benchmark"],
                                         "--allow-rejected-benchmark: only the test stage")])
def test_experiment_usage_errors_before_work(argv, words, tmp_path, capsys, no_work):
    out = str(tmp_path / "exp")
    code, _, err = run(["experiment", "--quick", *argv, "--out", out], capsys)
    assert_usage_error(code, err, words)
    assert not os.path.exists(out)


# ----------------------------------------------------------------------------- nothing loaded runs code


class Planted:
    """Unpickling this object creates a folder: the stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _planted_files(tmp_path, marker):
    """A raw pickle and a torch.save archive whose unpickling would create ``marker``."""
    good = read_checkpoint(tiny_checkpoint(tmp_path / "good" / "best.pt"))
    raw = tmp_path / "raw" / "best.pt"
    raw.parent.mkdir()
    raw.write_bytes(pickle.dumps({"format": FORMAT, "config": Planted(marker)}))
    archive = tmp_path / "archive" / "best.pt"
    archive.parent.mkdir()
    torch.save({**good, "metrics": [Planted(marker)]}, archive)
    # the files are live: an unsafe load would run the planted call
    pickle.loads(raw.read_bytes())
    assert marker.exists()
    marker.rmdir()
    torch.load(archive, weights_only=False)
    assert marker.exists()
    marker.rmdir()
    return [str(raw), str(archive)]


def test_a_planted_pickle_never_runs(tmp_path, capsys, no_work):
    from convex_attention.bench.generators import generate, register_generator
    from convex_attention.hierarchy import Hierarchy
    from convex_attention.paper import model_scores

    marker = tmp_path / "PWNED"
    for path in _planted_files(tmp_path, marker):
        with pytest.raises(ValueError, match="not a convex-attention checkpoint"):
            load_model(path)
        code, _, err = run(["train", "--resume", path], capsys)
        assert_usage_error(code, err, "--resume", "not a convex-attention checkpoint")
        code, _, err = run(["explain", "--checkpoints", f"m={path}", "--out", str(tmp_path / "o")], capsys)
        assert_usage_error(code, err, "--checkpoints", "not a convex-attention checkpoint")
        register_generator("model", model_scores.model_scores)
        with pytest.raises(ValueError, match="not a convex-attention checkpoint"):
            generate("model", Hierarchy.grid([(8, 8), (4, 4)]), 2, checkpoint=path)
        code, _, err = run(["bench", "--generator", "model", "--checkpoint", path, "--sizes", "8", "--levels", "2",
                            "--out", str(tmp_path / "bench")], capsys)
        assert code == 2 and "not a convex-attention checkpoint" in err and "Traceback" not in err
        assert not marker.exists()


# ----------------------------------------------------------------------------- folder data


def write_folder(root, n=4, size=16, fmt="png", labels=None, shapes=None, nan_at=None, garbage_at=None, seed=0):
    """A FolderDataset of ``n`` random images (image i drawn with seed ``seed + i``: a validation folder takes
    another ``seed``, since a set sharing an image with the training set is refused)."""
    from PIL import Image

    os.makedirs(os.path.join(root, "images"))
    rows = []
    for i in range(n):
        name = f"img{i}.{fmt}"
        s = (shapes or {}).get(i, size)
        arr = (np.random.default_rng(seed + i).random((s, s)) * 255).astype(np.uint8)
        path = os.path.join(root, "images", name)
        if i == garbage_at:
            with open(path, "wb") as f:
                f.write(b"this is not an image")
        elif fmt == "png":
            Image.fromarray(arr).save(path)
        else:
            a = np.stack([arr] * 4).astype(np.float32)
            if i == nan_at:
                a[0, 1, 1] = np.nan
            np.save(path, a)
        rows.append({"filename": name, "label": (labels or {}).get(i, i % 2)})
    with open(os.path.join(root, "labels.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["filename", "label"])
        w.writeheader()
        w.writerows(rows)
    return root


FOLDER_BAD = [
    (dict(shapes={2: 24}), "img2.png", "one size"),
    (dict(garbage_at=1), "img1.png", "not a readable PNG image"),
    (dict(garbage_at=1, fmt="npy"), "img1.npy", "NumPy"),
    (dict(fmt="npy", nan_at=3), "img3.npy", "NaN or Inf"),
    (dict(labels={1: "lesion"}), "img1.png", "must be an integer"),
    (dict(labels={2: 5}), "img2.png", "labels must be 0 .. 1"),
    (dict(labels={0: -1}), "img0.png", "labels must be 0 .. 1"),
]


@pytest.mark.parametrize("kwargs,name,words", FOLDER_BAD)
def test_folder_data_errors_name_the_file_and_the_fix(kwargs, name, words, tmp_path):
    from convex_attention.paper.data import FolderDataset

    root = write_folder(str(tmp_path / "d"), **kwargs)
    with pytest.raises(ValueError, match=words) as err:
        FolderDataset(root)
    assert name in str(err.value)


def test_folder_npy_holding_python_objects_is_never_unpickled(tmp_path):
    from convex_attention.paper.data import FolderDataset

    root = write_folder(str(tmp_path / "d"), fmt="npy")
    marker = tmp_path / "PWNED"
    arr = np.empty(1, dtype=object)
    arr[0] = Planted(marker)
    np.save(os.path.join(root, "images", "img0.npy"), arr, allow_pickle=True)
    with pytest.raises(ValueError, match="img0.npy.*Python objects are never loaded"):
        FolderDataset(root)
    assert not marker.exists()


def test_folder_duplicates_and_a_good_folder(tmp_path):
    from convex_attention.paper.data import FolderDataset

    good = FolderDataset(write_folder(str(tmp_path / "ok"), fmt="npy"))
    assert len(good) == 4 and good.image_shape == (4, 16, 16) and good[0][0].shape == (4, 16, 16)
    root = write_folder(str(tmp_path / "dup"))
    with open(os.path.join(root, "labels.csv"), "a") as f:
        f.write("img0.png,1\n")
    with pytest.raises(ValueError, match="listed twice"):
        FolderDataset(root)


def test_train_on_a_bad_folder_is_a_usage_error_naming_the_file(tmp_path, capsys, no_work):
    root = tmp_path / "data"
    write_folder(str(root / "train"), fmt="npy", nan_at=2)
    write_folder(str(root / "val"), fmt="npy", seed=100)
    code, _, err = run(["train", "--data", "folder", "--data-root", str(root), "--image-size", "16",
                        "--out", str(tmp_path / "o")], capsys)
    assert_usage_error(code, err, "img2.npy", "NaN")
    write_folder(str(tmp_path / "d2" / "train"), fmt="npy")
    write_folder(str(tmp_path / "d2" / "val"), fmt="npy", seed=100)
    code, _, err = run(["train", "--data", "folder", "--data-root", str(tmp_path / "d2"), "--image-size", "32",
                        "--out", str(tmp_path / "o")], capsys)
    assert_usage_error(code, err, "16x16", "--image-size")
    code, _, err = run(["train", "--data", "folder", "--out", str(tmp_path / "o")], capsys)
    assert_usage_error(code, err, "--data-root")


# ----------------------------------------------------------------------------- refusals that found a fault (review)

def _run_up_to_epoch_4(folder):
    """A run's folder after 4 epochs whose best was epoch 2: best.pt (epoch 2), last.pt
    (epoch 4), metrics.csv (epochs 1-4)."""
    tiny_checkpoint(folder / "best.pt", epoch=2, epochs=4)
    tiny_checkpoint(folder / "last.pt", epoch=4, epochs=4)
    with open(folder / "metrics.csv", "w", newline="") as f:
        f.write("epoch,val_auc\n" + "".join(f"{e},0.{5 + e}\n" for e in (1, 2, 3, 4)))
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_resume_from_an_older_checkpoint_of_its_own_folder_is_refused(tmp_path, capsys, no_work):
    """Before: '--resume OUT/best.pt --epochs 3' of a 4-epoch run replaced epochs 3-4 of
    metrics.csv and the epoch-4 last.pt without a word (exit 0)."""
    out = tmp_path / "run"
    before = _run_up_to_epoch_4(out)
    code, _, err = run(["train", "--resume", str(out / "best.pt"), "--epochs", "3", "--no-progress"], capsys)
    assert_usage_error(code, err, "--resume", "epoch 2", "up to epoch 4 (last.pt)", "epochs 3-4",
                       f"--resume {out / 'last.pt'}", "--out")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "last.pt").unlink()  # metrics.csv alone still records the later epochs
    code, _, err = run(["train", "--resume", str(out / "best.pt"), "--epochs", "3", "--no-progress"], capsys)
    assert_usage_error(code, err, "--resume", "up to epoch 4 (metrics.csv)")


def test_resume_from_last_or_into_another_folder_goes_on(tmp_path, capsys, monkeypatch):
    import convex_attention.paper.train as train_module

    out = tmp_path / "run"
    _run_up_to_epoch_4(out)
    seen = []
    monkeypatch.setattr(train_module, "train", lambda config, **kw: seen.append(config.out) or {"metrics": []})
    code, _, err = run(["train", "--resume", str(out / "last.pt"), "--epochs", "5", "--no-progress"], capsys)
    assert code == 0, err
    code, _, err = run(["train", "--resume", str(out / "best.pt"), "--epochs", "3", "--out", str(tmp_path / "b"),
                        "--no-progress"], capsys)
    assert code == 0, err
    assert seen == [str(out), str(tmp_path / "b")]


def test_a_resumed_run_in_another_folder_brings_its_best_checkpoint(tmp_path):
    """best.pt of the new folder is the epoch the selection holds (it was never written when
    no later epoch did better)."""
    from convex_attention.paper.config import TrainConfig
    from convex_attention.paper.train import _Run, build_checked_datasets

    best = tiny_checkpoint(tmp_path / "a" / "best.pt", epoch=2, epochs=4)
    state = read_checkpoint(best)
    state["best_epoch"] = 2
    config = TrainConfig.from_dict({**state["train_config"], "out": str(tmp_path / "b"), "resume": best})
    run_ = _Run(config, build_checked_datasets(config), None, lambda *a, **k: None)
    run_.restore(state)
    assert read_checkpoint(str(tmp_path / "b" / "best.pt"))["epoch"] == 2


def test_explain_refuses_to_replace_an_earlier_explanation_without_overwrite(tmp_path, capsys, monkeypatch):
    """Before: explain replaced the user's OUT/explain.md and explain.csv without a word."""
    import convex_attention.paper.explain as explain
    from convex_attention.paper.models import NonFiniteOutput

    a = tiny_checkpoint(tmp_path / "a" / "best.pt")
    out = tmp_path / "ex"
    out.mkdir()
    (out / "explain.md").write_text("USER NOTES")
    called = []

    def stop(*args, **kwargs):
        called.append(1)
        raise NonFiniteOutput("stopped here by the test")

    monkeypatch.setattr(explain, "explain_models", stop)
    code, _, err = run(["explain", "--checkpoints", f"a={a}", "--out", str(out), "--no-progress"], capsys)
    assert_usage_error(code, err, "--out", "explain.md", "--overwrite")
    assert called == [] and (out / "explain.md").read_text() == "USER NOTES"
    code, _, err = run(["explain", "--checkpoints", f"a={a}", "--out", str(out), "--overwrite", "--no-progress"],
                       capsys)
    assert code == 1 and called == [1], err  # consented: the work starts (and nothing is replaced before it ends)
    assert (out / "explain.md").read_text() == "USER NOTES"
    # a link in the output's place counts, dangling or not (it counted only where it led to a file)
    (out / "explain.md").unlink()
    (out / "explain.md").symlink_to(tmp_path / "nowhere.md")
    code, _, err = run(["explain", "--checkpoints", f"a={a}", "--out", str(out), "--no-progress"], capsys)
    assert_usage_error(code, err, "--out", "explain.md", "--overwrite")
    assert called == [1] and (out / "explain.md").is_symlink()


def _val_of_one_class(tmp_path):
    root = tmp_path / "data"
    write_folder(str(root / "train"), fmt="npy")
    write_folder(str(root / "val"), fmt="npy", seed=100, labels={i: 0 for i in range(4)})
    return ["--data", "folder", "--data-root", str(root), "--image-size", "16"]


def _of_missing_data(tmp_path):
    return tiny_checkpoint(tmp_path / "a" / "best.pt", image_size=16, data="folder",
                           data_root=str(tmp_path / "nonexist"))


@pytest.mark.parametrize("argv, words", [
    (lambda tmp: ["train", "--data", "folder", "--data-root", str(tmp / "nonexist")], "does not exist"),
    (lambda tmp: ["train", "--n-val", "1"], "holds no image of class 1"),
    (lambda tmp: ["train", *_val_of_one_class(tmp)], "holds no image of class 1"),
    (lambda tmp: ["explain", "--checkpoints", f"a={tmp / 'notckpt.pt'}"], "does not exist"),
    (lambda tmp: ["explain", "--checkpoints", f"a={_of_missing_data(tmp)}"], "does not exist"),
])
def test_a_refused_run_leaves_no_out_folder(argv, words, tmp_path, capsys, no_work):
    """Before: the refused run had made --out (empty) first; and a validation set of one
    class trained, reporting 'bal.acc 1.000' next to an AUC of nan, best.pt picked on nothing."""
    out = tmp_path / "deep" / "out"
    code, _, err = run([*argv(tmp_path), "--out", str(out)], capsys)
    assert_usage_error(code, err, words)
    assert not (tmp_path / "deep").exists()


def test_a_temperature_below_the_models_range_is_refused_before_any_folder(tmp_path, capsys, no_work):
    out = tmp_path / "run"
    code, _, err = run(["train", "--temperature", "1e-300", "--image-size", "32", "--width", "4", "--device", "cpu",
                        "--out", str(out)], capsys)
    assert_usage_error(code, err, "--temperature", "float32")
    assert len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("field,value,words", [("image_size", 64, "image_size: train_config 64 vs model 32"),
                                                ("in_channels", 3, "in_channels: train_config 3 vs model 4")])
def test_explain_refuses_a_checkpoint_whose_stored_model_disagrees_with_its_weights(field, value, words, tmp_path,
                                                                                  capsys, no_work):
    path = tiny_checkpoint(tmp_path / "a" / "best.pt", image_size=32, in_channels=4)
    state = torch.load(path, weights_only=True)
    state["train_config"]["model"][field] = value  # edited: the data would be built for another model
    torch.save(state, path)
    out = tmp_path / "o"
    code, _, err = run(["explain", "--checkpoints", f"a={path}", "--out", str(out)], capsys)
    assert_usage_error(code, err, "--checkpoints", "disagrees with the model it holds", words)
    assert len(err.strip().splitlines()) == 1 and not out.exists()


# ----------------------------------------------------------------------------- one writer per --out

def _holding(folder):
    """Another live run holding ``folder``'s lock (tests/test_lock.py's holder)."""
    from test_lock import hold_lock

    folder.mkdir(parents=True, exist_ok=True)
    return hold_lock(folder, 60)


def _argv_into(command, tmp_path, out):
    """``command`` on a small setting into ``out``, replacing what an earlier run left there."""
    return {"train": ["train", *_SMALL_RUN, "--overwrite"],
            "explain": ["explain", "--checkpoints", f"m={tiny_checkpoint(tmp_path / 'a' / 'best.pt')}", "--overwrite",
                        "--no-progress"],
            "experiment": ["experiment", "--quick", "--no-progress"]}[command] + ["--out", str(out)]


@pytest.mark.parametrize("command", ["train", "explain", "experiment"])
def test_a_run_into_a_folder_another_run_holds_is_refused_and_changes_nothing(command, tmp_path, capsys, no_work):
    """Before: train took no lock: a second `train --overwrite` into the --out of a running
    one deleted its files while it wrote them, and both exited 0 with the folder mixing
    two runs (found by a hostile review); explain and experiment took none either."""
    from convex_attention.io.lock import LOCK_NAME

    out = tmp_path / "busy"
    before = _earlier_run(out)
    (out / "explain.csv").write_text("the earlier explanation")
    before["explain.csv"] = "the earlier explanation"
    holder = _holding(out)
    try:
        code, _, err = run(_argv_into(command, tmp_path, out), capsys)
    finally:
        holder.kill()
        holder.wait()
    assert_usage_error(code, err, "is in use by", f"pid {holder.pid}", "--wait")
    assert len(err.strip().splitlines()) == 1
    assert {p.name: p.read_text() for p in out.iterdir() if p.name != LOCK_NAME} == before


@pytest.mark.parametrize("command", ["train", "explain", "experiment"])
def test_the_work_runs_under_the_out_folders_lock(command, tmp_path, capsys, monkeypatch):
    import json

    import convex_attention.paper.experiment as experiment
    import convex_attention.paper.explain as explain
    import convex_attention.paper.train as train_module

    out = tmp_path / "o"
    seen = []

    def work(*args, **kwargs):
        seen.append(json.loads((out / "results.lock").read_text()))
        raise MemoryError()  # the run ends there (exit 1), its lock released

    monkeypatch.setattr(train_module, "train", work)
    monkeypatch.setattr(explain, "explain_models", work)
    monkeypatch.setattr(experiment, "run_experiment", work)
    code, _, err = run(_argv_into(command, tmp_path, out), capsys)
    assert code == 1 and "memory ran out" in err, err
    assert [(s["pid"], s["command"]) for s in seen] == [(os.getpid(), command)]
    assert not (out / "results.lock").exists()


def test_under_torchrun_only_rank_0_holds_the_lock_and_removes_the_earlier_run(tmp_path, capsys, monkeypatch):
    """The other ranks check the folder but neither lock it (rank 0 holds it for the run)
    nor remove files: a rank of a second run refused by rank 0's lock must not have
    deleted the first run's files."""
    import convex_attention.paper.train as train_module

    out = tmp_path / "run"
    before = _earlier_run(out)
    seen = {}

    def fake_train(config, **kwargs):
        seen["files"] = sorted(p.name for p in out.iterdir())
        return {"metrics": []}

    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.setenv("RANK", "1")
    code, _, err = run(["train", *_SMALL_RUN, "--out", str(out), "--overwrite"], capsys)
    assert code == 0, err
    assert seen["files"] == sorted(before)  # no results.lock, nothing removed
    monkeypatch.setenv("RANK", "0")
    code, _, err = run(["train", *_SMALL_RUN, "--out", str(out), "--overwrite"], capsys)
    assert code == 0, err
    assert seen["files"] == ["config.json", "notes.txt", "results.lock"]


def test_resume_reads_its_checkpoint_again_under_the_lock(tmp_path, capsys, monkeypatch):
    """A resumed run that waited for the folder (--wait) continues the checkpoint as the run
    it waited for left it, not as it was read before: it would otherwise replace that run's
    later epochs (metrics.csv rows, last.pt)."""
    import contextlib

    import convex_attention.io.lock as lock
    import convex_attention.paper.train as train_module

    path = tiny_checkpoint(tmp_path / "x" / "last.pt", epoch=1, epochs=4)
    real = lock.results_lock

    @contextlib.contextmanager
    def after_another_run(out, **kwargs):  # the run waited for went on to epoch 2 meanwhile
        tiny_checkpoint(path, epoch=2, epochs=4)
        with real(out, **kwargs) as held:
            yield held

    seen = {}

    def fake_train(config, resume_state=None, **kwargs):
        seen["epoch"] = resume_state["epoch"]
        return {"metrics": []}

    monkeypatch.setattr(lock, "results_lock", after_another_run)
    monkeypatch.setattr(train_module, "train", fake_train)
    code, _, err = run(["train", "--resume", path, "--wait", "--no-progress"], capsys)
    assert code == 0, err
    assert seen["epoch"] == 2


# ----------------------------------------------------------------------------- mutation testing (cli/paper.py)

def test_resume_of_a_moved_checkpoint_writes_into_its_new_folder(tmp_path):
    """--out's default with --resume is the checkpoint's folder (its --help), not the folder
    the checkpoint was trained in."""
    import shutil

    from convex_attention.cli.paper import train_config_from_args

    path = tiny_checkpoint(tmp_path / "trained" / "last.pt", epoch=1, epochs=2)
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(path, moved / "last.pt")
    config, _ = train_config_from_args(cli.build_parser().parse_args(["train", "--resume", str(moved / "last.pt")]))
    assert config.out == str(moved)


def test_a_failed_run_with_a_message_of_several_lines_is_one_line_exit_1(tmp_path, capsys, monkeypatch):
    import convex_attention.paper.experiment as experiment
    from convex_attention.paper.train import ValidationClassesError

    def fail(*args, **kwargs):
        raise ValidationClassesError("the validation split holds no image of class 1:\n  draw it again")

    monkeypatch.setattr(experiment, "run_experiment", fail)
    code, _, err = run(["experiment", "--quick", "--out", str(tmp_path / "e")], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "no image of class 1: draw it again" in err


def test_a_folder_holding_only_an_earlier_runs_config_is_an_earlier_run(tmp_path, capsys, no_work):
    """RUN_FILES: a folder that holds one of them (config.json too: a run stopped before its
    first epoch) holds an earlier run."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    code, _, err = run(["train", *_SMALL_RUN, "--out", str(out)], capsys)
    assert_usage_error(code, err, "--out", "holds an earlier run (config.json)", "--overwrite")
    assert (out / "config.json").read_text() == "{}"


@pytest.mark.parametrize("failure, shown", [(MemoryError(), "(MemoryError)"),
                                            (RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to "
                                                          "allocate 1 TiB"), "(RESOURCE_EXHAUSTED: Out of memory")])
def test_an_allocation_failure_names_what_ran_out(failure, shown, capsys):
    """A MemoryError without a message is named by its type; "out of memory" is matched in
    any case."""
    from convex_attention.cli.paper import _allocation_failure, _out_of_memory

    assert _allocation_failure(failure)
    assert _out_of_memory("train", failure, "use a smaller --batch-size") == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"memory ran out {shown}" in err, err


def test_resume_into_another_folder_that_holds_a_run_is_refused(tmp_path, capsys, no_work):
    """Only --resume OUT/last.pt continues the run in OUT: a checkpoint of another folder
    continued into a folder of an earlier run would replace that run's files."""
    path = tiny_checkpoint(tmp_path / "a" / "last.pt", epoch=1, epochs=2)
    out = tmp_path / "b"
    before = _earlier_run(out)
    code, _, err = run(["train", "--resume", path, "--out", str(out), "--no-progress"], capsys)
    assert_usage_error(code, err, "--out", "holds an earlier run", "--overwrite")
    assert {p.name: p.read_text() for p in out.iterdir()} == before


def test_resume_from_a_checkpoint_one_epoch_behind_its_folder_is_refused(tmp_path, capsys, no_work):
    out = tmp_path / "run"
    _run_up_to_epoch_4(out)
    tiny_checkpoint(out / "best.pt", epoch=3, epochs=4)
    code, _, err = run(["train", "--resume", str(out / "best.pt"), "--no-progress"], capsys)
    assert_usage_error(code, err, "--resume", "epoch 3", "up to epoch 4 (last.pt)", "would replace epoch 4 (")


def test_the_last_finished_epoch_survives_a_torn_or_unreadable_metrics_file(tmp_path, capsys, no_work):
    """A metrics.csv row without an epoch (a torn write) is skipped, not the whole file; a
    metrics.csv that is not text leaves last.pt to say how far the run went."""
    out = tmp_path / "run"
    _run_up_to_epoch_4(out)
    (out / "last.pt").unlink()
    with open(out / "metrics.csv", "a") as f:
        f.write(",0.\n")
    code, _, err = run(["train", "--resume", str(out / "best.pt"), "--no-progress"], capsys)
    assert_usage_error(code, err, "--resume", "up to epoch 4 (metrics.csv)", "no last.pt is there")
    tiny_checkpoint(out / "last.pt", epoch=4, epochs=4)
    (out / "metrics.csv").write_bytes(b"\xff\xfe\x00epoch\x00\xff\n\xff4\n")
    code, _, err = run(["train", "--resume", str(out / "best.pt"), "--no-progress"], capsys)
    assert_usage_error(code, err, "--resume", "up to epoch 4 (last.pt)")


def test_resume_from_last_goes_on_whatever_metrics_csv_records(tmp_path, capsys, monkeypatch):
    """last.pt is the run's last finished epoch: a metrics.csv row written after it (a run
    stopped between the two) does not refuse '--resume OUT/last.pt'."""
    import convex_attention.paper.train as train_module

    out = tmp_path / "run"
    tiny_checkpoint(out / "last.pt", epoch=3, epochs=4)
    (out / "metrics.csv").write_text("epoch,val_auc\n" + "".join(f"{e},0.{5 + e}\n" for e in (1, 2, 3, 4)))
    seen = []
    monkeypatch.setattr(train_module, "train", lambda config, resume_state=None, **kw: seen.append(
        resume_state["epoch"]) or {"metrics": []})
    code, _, err = run(["train", "--resume", str(out / "last.pt"), "--no-progress"], capsys)
    assert code == 0, err
    assert seen == [3]


def test_resume_from_a_best_pt_of_the_last_finished_epoch_goes_on(tmp_path, capsys, monkeypatch):
    """Nothing later is there to replace: best was the last epoch."""
    import shutil

    import convex_attention.paper.train as train_module

    out = tmp_path / "run"
    tiny_checkpoint(out / "best.pt", epoch=4, epochs=4)
    shutil.copy(out / "best.pt", out / "last.pt")
    seen = []
    monkeypatch.setattr(train_module, "train", lambda config, resume_state=None, **kw: seen.append(
        resume_state["epoch"]) or {"metrics": []})
    code, _, err = run(["train", "--resume", str(out / "best.pt"), "--epochs", "5", "--no-progress"], capsys)
    assert code == 0, err
    assert seen == [4]


@pytest.mark.parametrize("argv, flag", [(["--difficulties", "0.5"], "--difficulties"),
                                        (["--held-out-mimic", "none"], "--held-out-mimic"),
                                        (["--grid-head", "learned"], "--grid-head")])
def test_the_test_stage_takes_what_the_variants_file_fixes_from_it_alone(argv, flag, tmp_path, capsys, no_work):
    code, _, err = run(["experiment", "--stage", "test", "--quick", *argv, "--out", str(tmp_path / "e")], capsys)
    assert_usage_error(code, err, flag, "from the committed variants file", "never from the command line")
    assert not (tmp_path / "e").exists()


def _explain_reaching_the_work(tmp_path, capsys, monkeypatch, argv, first_folder: str = "a") -> dict:
    """The options ``explain`` hands its work, the models' names with them (the work stops there);
    the first checkpoint lies in ``first_folder``."""
    import convex_attention.paper.explain as explain
    from convex_attention.paper.models import NonFiniteOutput

    seen = {}

    def stop(models, val, **kwargs):
        seen.update(kwargs, models=sorted(models))
        raise NonFiniteOutput("stopped here by the test")

    monkeypatch.setattr(explain, "explain_models", stop)
    a = tiny_checkpoint(tmp_path / first_folder / "best.pt")
    b = tiny_checkpoint(tmp_path / "b" / "best.pt", method="exact")
    code, _, err = run(["explain", "--checkpoints", f"softmax={a}", f"exact={b}", *argv, "--out", str(tmp_path / "o"),
                        "--no-progress"], capsys)
    assert code == 1 and "stopped here by the test" in err, err
    return seen


def test_explain_passes_its_options_to_the_work(tmp_path, capsys, monkeypatch):
    """--baseline-model defaults to every model; a PATH may hold '=' (NAME is what precedes
    the first); --target, --upsampling and --pixel-only reach the scoring."""
    seen = _explain_reaching_the_work(tmp_path, capsys, monkeypatch,
                                      ["--target", "predicted", "--upsampling", "bilinear", "--pixel-only"],
                                      first_folder="a=1")
    assert seen["models"] == ["exact", "softmax"] and sorted(seen["baseline_model"]) == ["exact", "softmax"]
    assert seen["target"] == "predicted" and seen["upsampling"] == "bilinear" and seen["pooled"] is False


def test_explain_defaults_are_the_ones_its_help_shows(tmp_path, capsys, monkeypatch):
    import re

    seen = _explain_reaching_the_work(tmp_path, capsys, monkeypatch, [])
    # (the device shown, auto, is resolved before the work: test_explain_on_auto_uses_cuda_where_there_is_one)
    for option, kwarg in (("--target", "target"), ("--n-images", "n_images"), ("--batch-size", "batch_size"),
                          ("--upsampling", "upsampling")):
        (action,) = [a for a in _subparsers()["explain"]._actions if option in a.option_strings]
        shown = re.search(r"\(default: ([^)]*)\)", action.help).group(1)
        assert str(seen[kwarg]) == shown, (option, seen[kwarg], shown)


@pytest.mark.parametrize("argv,explained", [(["--baseline-model", "none"], []),
                                             (["--baseline-model", "exact"], ["exact"])])
def test_explain_baseline_model_names_the_models_the_post_hoc_methods_explain(argv, explained, tmp_path, capsys,
                                                                              monkeypatch):
    seen = _explain_reaching_the_work(tmp_path, capsys, monkeypatch, argv)
    assert list(seen["baseline_model"] or []) == explained


@pytest.mark.parametrize("available,device", [(True, "cuda"), (False, "cpu")])
@pytest.mark.parametrize("argv", [["--device", "auto"], []])
def test_explain_on_auto_uses_cuda_where_there_is_one(available, device, argv, tmp_path, capsys, monkeypatch):
    """auto is explain's default, as train's and the experiment's (it had been the CPU, so a model
    trained on a GPU was explained on the CPU unless --device said otherwise)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    assert _explain_reaching_the_work(tmp_path, capsys, monkeypatch, argv)["device"] == device


def test_train_into_a_file_is_refused_by_every_torchrun_rank_before_the_data_are_built(tmp_path, capsys, monkeypatch,
                                                                                        no_work):
    """A rank other than 0 takes no lock (whose check would refuse the file): it refuses
    the file itself, before any work."""
    import convex_attention.paper.train as train_module

    def build(config):
        raise AssertionError("the data were built before --out was checked")

    monkeypatch.setattr(train_module, "build_checked_datasets", build)
    monkeypatch.setenv("RANK", "1")
    a_file = tmp_path / "file"
    a_file.write_text("the user's")
    code, _, err = run(["train", *_SMALL_RUN, "--out", str(a_file)], capsys)
    assert_usage_error(code, err, "--out", "is a file")
    assert a_file.read_text() == "the user's"


def test_explain_with_overwrite_and_no_figure_removes_the_earlier_explanations_figure(tmp_path, capsys, monkeypatch):
    """An explanation without examples writes no figure; an earlier run's figure left in --out
    would pass for this one's, so --overwrite removes it (and nothing else of the user's)."""
    import convex_attention.paper.explain as explain

    def no_figure(rows, examples, out_dir, **kwargs):
        paths = {"markdown": os.path.join(out_dir, "explain.md")}
        with open(paths["markdown"], "w") as f:
            f.write("this run\n")
        return paths

    monkeypatch.setattr(explain, "explain_models", lambda *args, **kwargs: ([{"row": 1}], []))
    monkeypatch.setattr(explain, "write_outputs", no_figure)
    a = tiny_checkpoint(tmp_path / "a" / "best.pt")
    out = tmp_path / "ex"
    out.mkdir()
    for name in ("explain.md", "explain_examples.png", "explain_examples.pdf", "notes.txt"):
        (out / name).write_text("earlier")
    code, _, err = run(["explain", "--checkpoints", f"a={a}", "--out", str(out), "--overwrite", "--no-progress"],
                       capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["explain.md", "notes.txt"]
    assert (out / "notes.txt").read_text() == "earlier" and (out / "explain.md").read_text() == "this run\n"


def test_resume_of_an_older_synthetic_run_that_recorded_a_data_root_goes_on_without_it(tmp_path, capsys, monkeypatch):
    """train refuses --data-root with synthetic data now; a run from before recorded it (its
    source ignored it), and resuming that run goes on, on the same synthetic data."""
    import convex_attention.paper.train as train_module

    old = tiny_checkpoint(tmp_path / "run" / "last.pt", epochs=2, data_root=str(tmp_path / "ignored"))
    assert read_checkpoint(old)["train_config"]["data_root"] == str(tmp_path / "ignored")
    seen = []
    monkeypatch.setattr(train_module, "train", lambda config, **kw: seen.append(config) or {"metrics": []})
    code, _, err = run(["train", "--resume", old, "--epochs", "3", "--no-progress"], capsys)
    assert code == 0, err
    (config,) = seen
    assert config.data == "synthetic" and config.data_root is None


# ----------------------------------------------------------------------------- hostile review 28

def test_review28_resume_of_an_older_folder_run_that_recorded_a_synthetic_size(tmp_path):
    """TrainConfig.from_dict reads 'older' runs 'as today's' (an older data_root beside a synthetic
    source is dropped, not refused).  A folder run as 93ee0e3 recorded it with n_train=16 (TINY;
    93ee0e3 accepted `train --data folder --n-train 16`, the setting ignored): `train --resume` of
    it, with no other flag, is refused now with 'argument --n-train: n_train applies to the
    synthetic data only', a flag the user never passed.  Oracle: 93ee0e3 resumed it."""
    from convex_attention.cli.paper import train_config_from_args

    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    path = tiny_checkpoint(tmp_path / "run" / "last.pt", epoch=1, epochs=3, data="folder", data_root=str(root))
    config, state = train_config_from_args(cli.build_parser().parse_args(["train", "--resume", path]))
    assert config.data == "folder" and state["epoch"] == 1


# ----------------------------------------------------------------------------- review 34

def test_rev34_resume_refuses_an_optimiser_state_of_other_shapes_before_any_work(tmp_path, capsys, no_work):
    def other_shapes(state):
        entry = next(iter(state.values()))
        entry["exp_avg"], entry["exp_avg_sq"] = torch.zeros(1), torch.ones(1)

    path = _checkpoint_with_optimiser_state(tmp_path, other_shapes)
    code, _, err = run(["train", "--resume", path, "--out", str(tmp_path / "o")], capsys)
    assert_usage_error(code, err, "--resume")


def test_rev34_resume_refuses_metrics_rows_without_their_epoch_before_any_work(tmp_path, capsys, no_work):
    path = tiny_checkpoint(tmp_path / "x" / "last.pt", epoch=1, epochs=2)
    state = read_checkpoint(path)
    torch.save({**state, "metrics": [{"val_auc": 0.5}]}, path)
    code, _, err = run(["train", "--resume", path, "--out", str(tmp_path / "o")], capsys)
    assert_usage_error(code, err, "--resume")


# ----------------------------------------------------------------------------- review 42

def test_rev42_explain_refuses_an_output_name_that_is_a_folder_before_any_work(tmp_path, capsys, no_work):
    a = tiny_checkpoint(tmp_path / "a" / "best.pt")
    out = tmp_path / "ex"
    (out / "explain.csv").mkdir(parents=True)
    (out / "explain.csv" / "mine.txt").write_text("the user's")
    code, _, err = run(["explain", "--checkpoints", f"a={a}", "--out", str(out), "--overwrite", "--no-progress"],
                       capsys)
    assert_usage_error(code, err, "explain.csv", "folder")
    assert (out / "explain.csv" / "mine.txt").read_text() == "the user's"


@pytest.mark.parametrize("name", ["metrics.csv", "best.pt"])
def test_rev42_train_refuses_a_run_file_name_that_is_a_folder_before_any_work(name, tmp_path, capsys, no_work):
    out = tmp_path / "run"
    (out / name).mkdir(parents=True)
    for overwrite in ([], ["--overwrite"]):
        code, _, err = run(["train", *_SMALL_RUN, "--out", str(out), *overwrite], capsys)
        assert_usage_error(code, err, name, "folder")
        assert sorted(p.name for p in out.iterdir()) == [name] and (out / name).is_dir()


@pytest.mark.parametrize("argv,field", [(["--temperature", "0.7"], "temperature"), (["--alpha", "3"], "alpha")])
def test_resume_refuses_other_model_settings(argv, field, tmp_path, capsys, no_work):
    """The temperature, the learned dual's alpha and the solver options decide what the
    earlier epochs computed, and best.pt is chosen among them: a resumed run took another
    value silently and recorded only the new one (a reviewer's near-miss)."""
    path = tiny_checkpoint(tmp_path / "x" / "last.pt", epoch=1, epochs=2)
    code, _, err = run(["train", "--resume", path, *argv], capsys)
    assert_usage_error(code, err, field, "a resumed run keeps them")


def test_every_model_setting_is_either_architecture_or_kept_on_resume():
    import dataclasses

    from convex_attention.paper.config import ModelConfig
    from convex_attention.paper.train import RESUME_KEEPS

    names = {f.name for f in dataclasses.fields(ModelConfig)}
    assert names == set(ModelConfig.ARCHITECTURE) | set(RESUME_KEEPS)


# ----------------------------------------------------------------------------- review ca_rev75

def test_ca_rev75_dev_stage_refuses_variants(tmp_path, capsys, no_work):
    out = tmp_path / "x"
    code, _, err = run(["experiment", "--quick", "--variants", str(tmp_path / "v.json"), "--out", str(out)], capsys)
    assert_usage_error(code, err, "--variants")
    assert not out.exists()


def test_ca_rev75_train_refuses_alpha_for_a_method_without_consistency_loss(tmp_path, capsys, no_work):
    out = tmp_path / "x"
    code, _, err = run(["train", "--method", "exact", "--alpha", "5", *_SMALL_RUN, "--out", str(out)], capsys)
    assert_usage_error(code, err, "--alpha")
    assert not out.exists()


def test_ca_rev75_test_stage_example_gives_an_unspent_data_seed():
    from convex_attention.cli.paper import SUBCOMMAND_EXAMPLES

    (line,) = [e for e in SUBCOMMAND_EXAMPLES["experiment"] if "--stage test" in e]
    # the dev stage spends --data-seed 0 (the default), so the test stage needs another (docs/user_guide.md §6)
    assert "--data-seed" in line.split("#")[0], line


# ----------------------------------------------------------------------------- review ca_rev76

def test_ca_rev76_dev_stage_refuses_variants_that_find_no_ledger(tmp_path, capsys, no_work):
    """ca_rev75 refuses a --variants that is no file, since the ledger beside it is found
    nowhere; any existing file (here not even a variants file) in a folder without
    data_ledger.json finds no ledger either, and the dev stage runs with no spent split."""
    notes = tmp_path / "notes.txt"
    notes.write_text("not a variants file\n")
    out = tmp_path / "x"
    code, _, err = run(["experiment", "--quick", "--variants", str(notes), "--out", str(out)], capsys)
    assert_usage_error(code, err, "--variants")
    assert not out.exists()


# ---- ca_rev117 (strict xfail: review of 8e6f256)

_CA_REV117_DEV = ["experiment", "--stage", "dev", "--quick", "--image-size", "32", "--width", "4", "--n-train", "32",
                  "--n-val", "16", "--n-dev", "16", "--epochs", "1", "--methods", "softmax", "--n-explain", "2",
                  "--n-sanity", "2", "--validity-images", "20", "--batch-size", "8", "--no-progress", "--quiet"]


@pytest.mark.slow  # end to end or a boundary of a path a lighter test takes (fast suite < 1 min)
def test_ca_rev117_a_second_dev_stage_into_one_folder_neither_replaces_nor_mixes_the_first(tmp_path, capsys):
    """Run: `experiment --stage dev` (tiny, softmax, --dev-seeds 0) into OUT, then the same
    with --dev-seeds 1 into the same OUT (no --force, no --overwrite).  Expected: refused
    (exit 2, the first run's files as they were), or the first run's results kept (moved
    aside) and OUT/dev holding the second run alone.  Observed: exit 0 both times;
    OUT/dev/proposed_variants.json, dev.md, dev.json and the csv files replaced in place
    (sha1 09a85a26... -> 357a37f1...), and OUT/dev/runs holds softmax-0-seed0 and
    plain_cnn-seed0 of the first run beside softmax-0-seed1 and plain_cnn-seed1 of the
    second, which no file of the second run names (a repeat with the same seeds replaces
    the first run's best.pt/last.pt in place)."""
    out = tmp_path / "exp"
    code, _, err = run([*_CA_REV117_DEV, "--dev-seeds", "0", "--out", str(out)], capsys)
    assert code == 0, err
    first = read_bytes(out / "dev" / "proposed_variants.json")
    code, _, err = run([*_CA_REV117_DEV, "--dev-seeds", "1", "--out", str(out)], capsys)
    if code == 2:  # refused: the first run's results as they were
        assert read_bytes(out / "dev" / "proposed_variants.json") == first
        return
    assert code == 0, err
    assert [p for p in out.rglob("proposed_variants.json") if read_bytes(p) == first], "the first proposal is gone"
    assert sorted(os.listdir(out / "dev" / "runs")) == ["plain_cnn-seed1", "softmax-0-seed1"]


@pytest.mark.slow  # end to end or a boundary of a path lighter tests take (fast suite < 1 min)
def test_ca_rev117_train_overwrite_leaves_no_file_of_the_earlier_run(tmp_path, capsys):
    """Run: `train` (1 epoch) into OUT, then OUT/ddp_check.json as a 2-process torchrun run
    writes it (_Run.finish: world_size 2, identical true), then `train --overwrite --seed 3`
    into OUT (one process).  Expected: the new run's folder holds no file of the earlier
    run (check_run_folder: "the folder never mixes two runs").  Observed: exit 0 and
    ddp_check.json unchanged ({'world_size': 2, ..., 'identical': True}) beside the new
    one-process run's best.pt, last.pt, metrics.csv and config.json."""
    from convex_attention.io.files import write_json

    out = tmp_path / "run"
    argv = ["train", *_SMALL_RUN, "--epochs", "1", "--quiet", "--out", str(out)]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    stale = {"world_size": 2, "digests": ["a", "a"], "parameter_digests": ["b", "b"], "identical": True}
    write_json(str(out / "ddp_check.json"), stale)
    code, _, err = run([*argv, "--overwrite", "--seed", "3"], capsys)
    assert code == 0, err
    assert not (out / "ddp_check.json").exists()


def test_ca_rev117_explain_with_nothing_to_explain_is_a_usage_error_before_work(tmp_path, capsys, no_work):
    """Run: `explain --checkpoints p=<plain CNN checkpoint> --baseline-model none --n-images 2`
    (a plain CNN has no attention maps, and 'none' asks for no post-hoc method).  Expected:
    one line on stderr, exit 2, before any work.  Observed (in a subprocess, without
    no_work): the images were explained (no map), then write_outputs raised
    'ValueError: nothing was explained: no rows to write' as a traceback, exit 1."""
    from convex_attention.paper.models import ModelConfig, PlainCNN

    state = read_checkpoint(tiny_checkpoint(tmp_path / "y" / "best.pt"))
    plain = save_checkpoint(str(tmp_path / "p" / "best.pt"), PlainCNN(config=ModelConfig.from_dict(state["config"])),
                            epoch=1, extra={"train_config": state["train_config"]})
    out = tmp_path / "o"
    code, _, err = run(["explain", "--checkpoints", f"p={plain}", "--baseline-model", "none", "--n-images", "2",
                        "--out", str(out)], capsys)
    assert_usage_error(code, err, "--baseline-model")
    assert not out.exists()


# ---- ca_rev125 (strict xfail: review of bd11512)

def test_ca_rev125_train_on_a_training_folder_of_one_class_is_a_usage_error_before_work(tmp_path, capsys, no_work):
    """Run: `train --data folder --data-root R --image-size 16` where R/train lists 4 images all
    labelled 0 and R/val both classes.  Expected: one line on stderr naming the training folder
    and its class counts, exit 2, before any work (as a validation set without a class is
    refused: check_validation_classes).  Observed: the run starts (no_work's AssertionError);
    without no_work it trains to exit 0, reporting train acc 0.000 and a validation AUC."""
    root = tmp_path / "data"
    write_folder(str(root / "train"), fmt="npy", labels={1: 0, 3: 0})
    write_folder(str(root / "val"), fmt="npy", seed=100)
    code, _, err = run(["train", "--data", "folder", "--data-root", str(root), "--image-size", "16",
                        "--out", str(tmp_path / "o")], capsys)
    assert_usage_error(code, err, "class")


# ---- ca_rev130 (strict xfail: review of 9ef579d)


def test_ca_rev130_train_removes_the_temporaries_a_killed_run_left_in_its_folder(tmp_path, capsys):
    """OUT holds last.pt.4242-0.tmp, best.pt.4242-1.tmp and metrics.csv.4242-2.tmp: what a train
    killed inside save_checkpoint / atomic_csv leaves (io.files.temporary_file's names).
    Expected (docs/results_format.md: 'A temporary left by a killed run is removed when the
    next run starts in that folder'): a train into OUT removes them.  Observed: exit 0, the
    three files still there (clean_stale_tmp is called by bench and verify alone)."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("last.pt.4242-0.tmp", "best.pt.4242-1.tmp", "metrics.csv.4242-2.tmp"):
        (out / name).write_bytes(b"half a file")
    code, _, err = run(["train", *_SMALL_RUN, "--epochs", "1", "--quiet", "--out", str(out)], capsys)
    assert code == 0, err
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_explain_data_check_and_experiment_remove_the_temporaries_a_killed_run_left(tmp_path, capsys):
    """As train (ca_rev130): holding --out, explain, data check and experiment remove the NAME.<pid>-<n>.tmp of
    their own outputs (the experiment in its sub-folders too, its per-condition names by pattern), name them on
    stderr, and leave a file of another name or pattern alone."""
    from convex_attention.cli._common import holding_out
    from convex_attention.cli.paper import EXPERIMENT_FILES, EXPERIMENT_NAMED

    out = tmp_path / "o"
    (out / "dev").mkdir(parents=True)
    (out / "dev" / "explain-a-b-seed0.csv").write_text("kept")
    for name in ("explain.csv.4242-0.tmp", "notes.txt.1-1.tmp", "runs.csv.7-x.tmp"):
        (out / name).write_text("")
    for name in ("dev_runs.csv.4242-1.tmp", "explain-a-b-seed0.csv.4242-2.tmp", "mine.csv.4242-3.tmp"):
        (out / "dev" / name).write_text("")
    with holding_out(str(out), "experiment", object(), outputs=EXPERIMENT_FILES + ("explain.csv",),
                     patterns=EXPERIMENT_NAMED, recursive=True):
        pass
    # (no results.lock is left either: the sub-folders' were taken while cleaned, and removed again)
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == ["dev/explain-a-b-seed0.csv", "dev/mine.csv.4242-3.tmp", "notes.txt.1-1.tmp", "runs.csv.7-x.tmp"]
    err = capsys.readouterr().err
    assert "experiment: removed explain.csv.4242-0.tmp" in err and "dev_runs.csv.4242-1.tmp" in err


# ---- ca_rev131 (strict xfail: review of a83c028)


def test_ca_rev131_experiment_leaves_the_temporaries_of_a_live_run_in_a_sub_folder_it_does_not_hold(tmp_path):
    """`train --out OUT/extra_run` is running (it holds OUT/extra_run/results.lock) and is writing
    metrics.csv through metrics.csv.<its pid>-0.tmp when `experiment --out OUT` starts.  Expected
    (io.files.clean_stale_tmp: 'Call it only while holding the folder's lock (no other writer is
    alive then)'; results_format.md: the experiment cleans 'its stages' folders'): the live
    temporary stays.  Observed: holding_out(recursive=True) walks every folder below OUT, whoever
    holds it, and removes it (a user's notes/draft.md.1-2.tmp beside notes/draft.md goes too)."""
    import argparse

    from convex_attention.cli._common import holding_out
    from convex_attention.cli.paper import EXPERIMENT_FILES
    from convex_attention.io.files import temporary_name
    from convex_attention.io.lock import results_lock

    run_dir = tmp_path / "out" / "extra_run"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.csv").write_text("epoch\n0\n")
    with results_lock(str(run_dir), command="train"):  # the live train's lock
        live = temporary_name(str(run_dir / "metrics.csv"))
        with open(live, "w") as f:
            f.write("epoch\n0\n1\n")
        with holding_out(str(tmp_path / "out"), "experiment", argparse.Namespace(wait=False), outputs=EXPERIMENT_FILES,
                         recursive=True):
            pass
        assert os.path.exists(live)


# ---- ca_rev133 (strict xfail: review of f492f23)


def test_ca_rev133_experiment_removes_the_example_figure_temporaries_of_a_fractional_difficulty(tmp_path, capsys):
    """The test stage writes explain_examples_<condition_name(d)>.png and .pdf (figures.save: NAME.<pid>-<n>.tmp,
    then renamed).  docs/results_format.md: a temporary a killed run left is removed and named when the next
    experiment starts, in every sub-folder.  Expected: both temporaries removed and named; observed: both kept
    (explain_examples_difficulty1.png.4242-3.tmp, an integer difficulty, is removed)."""
    import argparse

    from convex_attention.cli._common import holding_out
    from convex_attention.cli.paper import EXPERIMENT_FILES, EXPERIMENT_NAMED
    from convex_attention.paper.protocol import condition_name

    test_dir = tmp_path / "out" / "test"
    test_dir.mkdir(parents=True)
    cond = condition_name(0.3)
    left = [f"explain_examples_{cond}.png.4242-1.tmp", f"explain_examples_{cond}.pdf.4242-2.tmp"]
    for name in left + ["explain_examples_difficulty1.png.4242-3.tmp"]:
        (test_dir / name).write_text("")
    with holding_out(str(tmp_path / "out"), "experiment", argparse.Namespace(wait=False), outputs=EXPERIMENT_FILES,
                     patterns=EXPERIMENT_NAMED, recursive=True):
        pass
    assert not (test_dir / "explain_examples_difficulty1.png.4242-3.tmp").exists()
    err = capsys.readouterr().err
    assert [name for name in left if (test_dir / name).exists() or name not in err] == []


def test_ca_rev133_experiment_keeps_or_names_a_killed_runs_lock_in_a_sub_folder(tmp_path, capsys):
    """A train into OUT/run_a was killed: its results.lock names a dead pid.  `experiment --out OUT` cleans the
    temporaries in OUT/run_a under that folder's lock (ca_rev131).  Expected (results_format.md: only the
    temporaries of its files are removed, 'A file of another name is never removed'; lock.py: a dead owner's lock
    is taken over 'and the log says whose it was'): the record stays, or its removal is said.  Observed: the
    record is gone and stderr names only the temporary."""
    import argparse
    import json
    import socket

    from convex_attention.cli._common import holding_out
    from convex_attention.cli.paper import EXPERIMENT_FILES, EXPERIMENT_NAMED

    run_dir = tmp_path / "out" / "run_a"
    run_dir.mkdir(parents=True)
    lock = run_dir / "results.lock"
    lock.write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": socket.gethostname(), "started": 1.0,
                                "command": "train"}))
    (run_dir / "metrics.csv.77-0.tmp").write_text("")
    with holding_out(str(tmp_path / "out"), "experiment", argparse.Namespace(wait=False), outputs=EXPERIMENT_FILES,
                     patterns=EXPERIMENT_NAMED, recursive=True):
        pass
    assert not (run_dir / "metrics.csv.77-0.tmp").exists()
    err = capsys.readouterr().err
    assert lock.exists() or "results.lock" in err or "took over" in err, err


# ---- ca_rev137 (strict xfail: review of 8f7bdd7)


def test_ca_rev137_the_dev_stage_refuses_the_test_stages_seeds_before_work(tmp_path, capsys, no_work):
    """Run: `experiment --stage dev --quick --seeds 0 1 2 3 4` (help: 'training seeds (test stage)').  Expected: one
    line on stderr naming --seeds (and --dev-seeds), exit 2, before any work, as the dev stage refuses the test
    stage's --force, --variants-sha256 and --allow-rejected-benchmark.  Observed: the stage starts (no_work's
    AssertionError); without no_work it trains --quick's one dev seed (0), so check (c') does not run ('needs ... at
    least 5 dev seeds, got 1') and the benchmark is rejected, with no word on the five seeds asked for."""
    code, _, err = run(["experiment", "--stage", "dev", "--quick", "--seeds", "0", "1", "2", "3", "4",
                        "--out", str(tmp_path / "o")], capsys)
    assert_usage_error(code, err, "--seeds")


def test_the_test_stage_refuses_the_dev_stages_seeds_before_work(tmp_path, capsys, no_work):
    """The mirror of ca_rev137: the test stage trains --seeds; --dev-seeds would be taken and never used."""
    code, _, err = run(["experiment", "--stage", "test", "--quick", "--dev-seeds", "0", "1",
                        "--out", str(tmp_path / "o")], capsys)
    assert_usage_error(code, err, "--dev-seeds")


# ---- ca_rev139 (strict xfail: review of 3de4598)

def test_ca_rev139_train_into_an_experiment_models_folder_does_not_advise_a_resume_it_refuses(tmp_path, capsys):
    """A folder of a model trained on splits its configuration does not rebuild (train(..., data_split=...), as
    the experiment's runs/*/).  Run: `train --out RUN --epochs 2`.  Observed: exit 2, 'holds an earlier run
    (...); pass --resume RUN/last.pt to continue it, or --overwrite ...'; following it, `train --resume
    RUN/last.pt --out RUN` is refused ('trained on splits its training configuration does not rebuild').
    Expected: the refusal names only ways on that are taken (--overwrite, another --out)."""
    from convex_attention.paper.data import SyntheticLesions
    from convex_attention.paper.train import TrainConfig, train

    folder = tmp_path / "run"
    train(TrainConfig.build(out=str(folder), epochs=1, image_size=32, width=4, embed_channels=8, n_train=16,
                            n_val=8, batch_size=8, seed=3, progress=False, device="cpu"),
          datasets=(SyntheticLesions(16, 32, seed=5), SyntheticLesions(8, 32, seed=6)),
          data_split={"by": "the experiment's protocol"})
    code, _, err = run(["train", "--out", str(folder), "--epochs", "2", "--quiet"], capsys)
    assert_usage_error(code, err, "--overwrite")
    if "--resume" in err:  # the advice, followed
        code, _, followed = run(["train", "--resume", str(folder / "last.pt"), "--out", str(folder), "--epochs",
                                 "2", "--quiet"], capsys)
        assert code != 2, followed


# ---- ca_rev171 (review of 230b1fc; its strict xfails now pass)

@pytest.mark.parametrize("name", ["a|b", "a\nb"])
def test_ca_rev171_explain_md_keeps_its_table_whatever_the_model_name(name, tmp_path, capsys):
    """Run: convex-attention explain --checkpoints $'a|b=runs/t/best.pt' --n-images 1 --baseline-model none
    --out OUT (and a name holding a newline). Expected: the name is refused before any work (exit 2), or
    explain.md's table keeps one row per line with the header's number of cells. Observed: exit 0 and
    markdown_table writes the name as it is: 'a|b' adds a cell to every row, a newline splits each row in two
    (explain.csv is fine: pandas reads the quoted name back)."""
    a = tiny_checkpoint(tmp_path / "a" / "best.pt")
    out = tmp_path / "o"
    code, _, err = run(["explain", "--checkpoints", f"{name}={a}", "--n-images", "1", "--baseline-model", "none",
                        "--pixel-only", "--out", str(out), "--quiet"], capsys)
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        return
    assert code == 0, err
    lines = (out / "explain.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| model |"))
    table = lines[start:]
    cells = table[0].count("|")
    broken = [line for line in table if line and (not line.startswith("|") or line.count("|") != cells)]
    assert broken == [], broken[:3]


# ---- ca_rev173 (review of 2d837fc; its strict xfails now pass)

def _ca_rev173_spoilt(tmp_path, spoil) -> str:
    """``x/last.pt`` of a tiny model after one Adam step, its optimiser state dict spoilt by ``spoil``."""
    path = _checkpoint_with_optimiser_state(tmp_path, lambda state: None)
    state = torch.load(path, weights_only=True)
    spoil(state["optimizer"])
    torch.save(state, path)
    return path


def _ca_rev173_betas(optimizer):
    for group in optimizer["param_groups"]:
        group["betas"] = (5.0,)


def _ca_rev173_scalar_moment(optimizer):
    for entry in optimizer["state"].values():
        entry["exp_avg"] = torch.tensor(1.0)


def _ca_rev173_step(optimizer):
    for entry in optimizer["state"].values():
        entry["step"] = "x"


@pytest.mark.parametrize("spoil", [_ca_rev173_betas, _ca_rev173_scalar_moment, _ca_rev173_step],
                         ids=["betas", "scalar-moment", "step"])
def test_ca_rev173_resume_refuses_a_damaged_optimiser_state_before_any_work(spoil, tmp_path, capsys, no_work):
    """Run: convex-attention train --resume x/last.pt --out o, x/last.pt a checkpoint whose optimiser state has
    betas (5.0,) in its param_groups, or an exp_avg that is a 0-d tensor, or a step 'x'.  Expected: exit 2, one
    line naming --resume, before any work (as for moments of other shapes: rev34).  Observed: the checks
    (read_checkpoint, check_optimizer_fits: a 0-d tensor is skipped as a scalar) pass and training starts; it
    ends in a traceback, exit 1: 'ValueError: not enough values to unpack' (betas) or 'RuntimeError: output
    with shape [] doesn't match the broadcast shape' (exp_avg) from Adam's first step, or 'ValueError: ... does
    not fit this Adam optimiser (could not convert string to float: '<generator object ...>')' (step) raised
    from the resume's load, uncaught."""
    path = _ca_rev173_spoilt(tmp_path, spoil)
    code, _, err = run(["train", "--resume", path, "--out", str(tmp_path / "o")], capsys)
    assert_usage_error(code, err, "--resume")


# ---- ca_rev183 (review of c2c898e; its strict xfails now pass)


def test_ca_rev183_baseline_model_none_twice_is_not_refused_as_standing_beside_nothing():
    """Run: explain's ``_explain_specs`` with ``--checkpoints a=x.pt b=y.pt --baseline-model none
    none``.  Expected: read as no model (``none`` is all it names), or refused as named more than
    once, as ``softmax softmax`` is.  Observed (d05c678, cli/paper.py ``_explain_specs``: the
    "'none' stands alone" refusal runs before the repetition check and lists the names other than
    'none', here none): "argument --baseline-model: 'none' (no model) stands alone, here beside ;
    pass 'none' or model names"."""
    from convex_attention.cli._common import UsageError
    from convex_attention.cli.paper import _explain_specs

    args = argparse.Namespace(checkpoints=["a=x.pt", "b=y.pt"], baseline_model=["none", "none"])
    try:
        specs, baseline = _explain_specs(args)
    except UsageError as err:
        assert "beside ;" not in str(err) and "more than once" in str(err), str(err)
    else:
        assert baseline is None and [n for n, _ in specs] == ["a", "b"]


# ---- ca_rev197 (review of b98ce6f; its strict xfails now pass)


def _ca_rev197_amsgrad(optimizer):
    for group in optimizer["param_groups"]:
        group["amsgrad"] = True


def test_ca_rev197_resume_of_a_checkpoint_whose_adam_says_amsgrad_fails_like_a_command(tmp_path, capsys):
    """Run: convex-attention train --resume x/last.pt --n-train 16 --out o, x/last.pt a checkpoint after one Adam
    step whose param_groups say amsgrad True (every check of read_checkpoint, check_optimizer_fits and
    check_resume passes).  Expected: exit 2, one line naming --resume, before any work, or the run trained with
    the Adam training builds (exit 0).  Observed: the data are built and training starts; Adam's first step
    raises KeyError: 'max_exp_avg_sq' (the moment amsgrad needs is not in the state), a traceback, exit 1
    (_Run.restore resets only lr and weight_decay of the loaded param_groups)."""
    path = _ca_rev173_spoilt(tmp_path, _ca_rev197_amsgrad)
    code, _, err = run(["train", "--resume", path, "--n-train", "16", "--batch-size", "8", "--no-progress",
                        "--out", str(tmp_path / "o")], capsys)
    assert code in (0, 2) and "Traceback" not in err, err
    if code == 2:
        assert_usage_error(code, err, "--resume")


# ---- ca_rev212 (mutation review of 3edf1f9, cli): tests that kill surviving mutants

def test_ca_rev212_the_check_alone_refuses_an_earlier_run_without_overwrite_and_removes_nothing(tmp_path):
    """check_run_folder(remove=False), train's check before any work (and a torchrun rank's other than 0):
    an earlier run's folder without --overwrite or --resume is refused there, not only where rank 0 removes."""
    from convex_attention.cli._common import UsageError
    from convex_attention.cli.paper import check_run_folder
    from convex_attention.paper.config import TrainConfig

    out = tmp_path / "run"
    _earlier_run(out)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(UsageError, match="holds an earlier run"):
        check_run_folder(TrainConfig(out=str(out)), argparse.Namespace(resume=None, overwrite=False), remove=False)
    check_run_folder(TrainConfig(out=str(out)), argparse.Namespace(resume=None, overwrite=True), remove=False)
    assert sorted(p.name for p in out.iterdir()) == before


def test_ca_rev212_train_refuses_a_run_file_name_that_is_a_folder_before_the_data_are_built(tmp_path, capsys,
                                                                                           monkeypatch, no_work):
    """The check of the run files' names comes before the data are built (minutes, for BraTS), not only
    under the lock after them."""
    import convex_attention.paper.train as train_module

    def refuse(*args, **kwargs):
        raise AssertionError("the data were built before --out was checked")

    monkeypatch.setattr(train_module, "build_checked_datasets", refuse)
    out = tmp_path / "run"
    (out / "metrics.csv").mkdir(parents=True)
    code, _, err = run(["train", *_SMALL_RUN, "--out", str(out)], capsys)
    assert_usage_error(code, err, "metrics.csv", "folder")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv"]


def test_ca_rev212_the_check_alone_keeps_ddp_check_json_of_the_run_it_resumes(tmp_path):
    """check_run_folder(remove=False) for ``--resume OUT/last.pt``: the weights' digests go only when the
    resumed run starts (remove=True), not at the check before any work, which may still refuse the run."""
    from convex_attention.cli.paper import check_run_folder
    from convex_attention.paper.config import TrainConfig

    out = tmp_path / "run"
    _earlier_run(out)
    (out / "ddp_check.json").write_text("{}")
    args = argparse.Namespace(resume=str(out / "last.pt"), overwrite=False)
    check_run_folder(TrainConfig(out=str(out)), args, remove=False)
    assert (out / "ddp_check.json").exists()
    check_run_folder(TrainConfig(out=str(out)), args, remove=True)
    assert not (out / "ddp_check.json").exists() and (out / "last.pt").exists()


def test_ca_rev212_explain_refuses_an_unknown_baseline_model_before_reading_a_checkpoint(tmp_path, capsys, no_work):
    """``--baseline-model`` naming no ``--checkpoints`` model is refused from the names alone, before any
    checkpoint is read (here one that is not there: its error would come first otherwise)."""
    missing = tmp_path / "nothing" / "best.pt"
    code, _, err = run(["explain", "--checkpoints", f"softmax={missing}", "--baseline-model", "plain", "--out",
                        str(tmp_path / "o")], capsys)
    assert_usage_error(code, err, "--baseline-model", "'plain' is not among the --checkpoints names")
    assert not (tmp_path / "o").exists()


def test_ca_rev212_explain_refuses_models_on_other_grids_before_any_work(tmp_path, capsys, no_work):
    """The pooled protocol pools every model's maps at one set of grids: checkpoints attending on other
    grids are refused before any work (--pixel-only takes them)."""
    a = tiny_checkpoint(tmp_path / "a" / "best.pt", attention_blocks=(3, 4))
    b = tiny_checkpoint(tmp_path / "b" / "best.pt", attention_blocks=(2, 3), method="exact")
    argv = ["explain", "--checkpoints", f"softmax={a}", f"exact={b}", "--out", str(tmp_path / "o")]
    code, _, err = run(argv, capsys)
    assert_usage_error(code, err, "--checkpoints", "pooled protocol needs one set of attention grids")


def test_ca_rev212_experiment_quick_starts_from_the_quick_preset(tmp_path):
    """``experiment --quick`` is the QUICK preset (with the options given over it), not the full setting."""
    from convex_attention.cli.paper import _subparser, experiment_config_from_args
    from convex_attention.paper.config import FULL, QUICK

    parser = _subparser("experiment")
    quick = experiment_config_from_args(parser.parse_args(["--quick"]))
    assert (quick.train.epochs, quick.grid) == (QUICK.train.epochs, QUICK.grid) and quick != FULL
    full = experiment_config_from_args(parser.parse_args([]))
    assert (full.train.epochs, full.grid) == (FULL.train.epochs, FULL.grid)


@pytest.mark.parametrize("stage,report", [("dev", "dev.md"), ("test", "experiment.md")])
def test_ca_rev212_experiment_names_its_stages_report(stage, report, tmp_path, capsys, monkeypatch):
    """The last info line names the stage's report: OUT/dev/dev.md, or OUT/test/experiment.md."""
    import convex_attention.paper.experiment as experiment
    from convex_attention.cli import paper as paper_cli

    monkeypatch.setattr(paper_cli, "_experiment_preflight", lambda args, config: None)
    monkeypatch.setattr(experiment, "run_experiment", lambda *args, **kwargs: {"report": "the report"})
    out = tmp_path / "x"
    code, printed, err = run(["experiment", "--quick", "--stage", stage, "--no-progress", "--out", str(out)], capsys)
    assert code == 0, err
    assert printed.strip().splitlines()[-1] == f"experiment: {os.path.join(str(out), stage, report)}"


# ---- ca_rev234 (help-text truth audit): experiment --data-seed's range


def test_ca_rev234_experiment_data_seed_above_999_is_refused_before_any_work(tmp_path, capsys):
    """`experiment --data-seed` is declared from 0 to 4294967295 (train's range), but the
    experiment's data seeds own one block of generator seeds each: above DATA_SEED_MAX (999) exit 2."""
    from convex_attention.paper.config import DATA_SEED_MAX

    out = tmp_path / "x"
    code, _, err = run(["experiment", "--quick", "--data-seed", str(DATA_SEED_MAX + 1), "--out", str(out)], capsys)
    assert code == 2 and f"from 0 to {DATA_SEED_MAX}" in err and "argument --data-seed" in err, err
    assert DATA_SEED_MAX == 999 and not out.exists()


# ---- ca_rev236 (new-user walkthrough)
def test_ca_rev236_a_run_stopped_in_its_first_epoch_is_not_offered_a_resume(tmp_path, capsys, no_work):
    """Ctrl-C in the first epoch leaves config.json alone; rerunning the command was told to "pass --resume
    OUT/last.pt", which was then refused ("checkpoint ... does not exist").  Only --overwrite is offered."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    code, _, err = run(["train", *_SMALL_RUN, "--out", str(out)], capsys)
    assert_usage_error(code, err, "--out", "finished no epoch", "--overwrite")
    assert "pass --resume" not in err, err
    assert (out / "config.json").read_text() == "{}"


def test_ca_rev236_an_interrupted_train_names_its_folder_and_whether_an_epoch_finished(tmp_path, capsys, monkeypatch):
    """The interrupt line said "OUT/last.pt holds the last finished epoch, if one finished", with the word OUT,
    and advised --resume where no epoch had finished (which --resume then refused: no such file)."""
    import convex_attention.paper.train as train_module

    out = tmp_path / "run"

    def one_epoch_then_ctrl_c(config, **kwargs):
        torch.save({"epoch": 1}, os.path.join(config.out, "last.pt"))
        raise KeyboardInterrupt

    def ctrl_c_at_once(config, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", ctrl_c_at_once)
    code, _, err = run(["train", *_SMALL_RUN, "--out", str(out)], capsys)
    last = os.path.join(str(out), "last.pt")
    assert code == 130 and err.strip() == (f"convex-attention train: interrupted before an epoch finished: there is "
                                           f"no {last} to resume (train --overwrite --out {out} starts over)")
    monkeypatch.setattr(train_module, "train", one_epoch_then_ctrl_c)
    code, _, err = run(["train", *_SMALL_RUN, "--out", str(out), "--overwrite"], capsys)
    assert code == 130 and err.strip() == (f"convex-attention train: interrupted; {last} holds the last finished "
                                           f"epoch (train --resume {last} continues from it)")


# ---- ca_rev238 (hostile review of the 43rd session's changes)
def test_ca_rev238_ctrl_c_before_training_starts_names_no_last_pt_of_the_run_being_replaced(tmp_path, capsys,
                                                                                               monkeypatch):
    """`train --overwrite` into a finished run's folder, stopped while its data were built (before the earlier run's
    files were removed): the line said "OUT/last.pt holds the last finished epoch (train --resume ...)", the
    replaced run's.  Nothing of this run was written, and the earlier run's files are all there."""
    import convex_attention.paper.train as train_module

    out = tmp_path / "run"
    before = _earlier_run(out)

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "build_checked_datasets", ctrl_c)
    code, _, err = run(["train", *_SMALL_RUN, "--out", str(out), "--overwrite"], capsys)
    assert code == 130 and err.strip() == ("convex-attention train: interrupted before training started; nothing "
                                           "of this run was written")
    assert {p.name: p.read_text() for p in out.iterdir()} == before


def test_ca_rev238_a_resume_into_another_folder_stopped_in_its_first_epoch_goes_on_by_the_same_command(
        tmp_path, capsys, monkeypatch):
    """`train --resume A/last.pt --out B` stopped before an epoch finished left B/config.json: the line told
    `--overwrite --out B` (which throws the resume away, and --overwrite with --resume is refused), and the same
    command was refused ("finished no epoch ... pass --overwrite"): no way on but deleting the file by hand.  The
    line names A/last.pt, and the same command continues, rewriting config.json; a folder with more than a
    configuration is still refused, naming another --out."""
    import convex_attention.paper.train as train_module

    resume = tiny_checkpoint(tmp_path / "a" / "last.pt", epoch=1, epochs=3)
    out = tmp_path / "b"
    argv = ["train", "--resume", str(resume), "--out", str(out), "--no-progress"]

    def first_epoch_stopped(config, **kwargs):
        os.makedirs(config.out, exist_ok=True)
        with open(os.path.join(config.out, "config.json"), "w") as f:
            f.write("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", first_epoch_stopped)
    code, _, err = run(argv, capsys)
    assert code == 130 and err.strip() == (f"convex-attention train: interrupted before an epoch finished: {resume} "
                                           f"is unchanged (train --resume {resume} --out {out} continues from it)")
    started = []
    monkeypatch.setattr(train_module, "train", lambda config, **kwargs: started.append(config.out) or
                        {"metrics": [], "best_epoch": None})
    code, _, err = run(argv, capsys)
    assert code == 0 and started == [str(out)], err
    (out / "ddp_check.json").write_text("{}")
    code, _, err = run(argv, capsys)
    assert_usage_error(code, err, "--out", "finished no epoch", "choose another --out")
    assert "pass --overwrite" not in err and started == [str(out)]


# ---- ca_rev239 (installed-package probe)
def test_ca_rev239_an_installed_package_without_configs_says_so_in_both_stages(tmp_path, capsys, monkeypatch):
    """From a wheel, the default --variants (configs/experiment_variants.json beside the package) is not there.
    The test stage said "write it from the dev stage's proposed_variants.json and commit it", of a file in
    site-packages; the dev stage found no data ledger there and ran, checking its splits against no recorded
    test run, silently (a checkout refuses a spent data seed).  Now: one usage line naming --variants and
    --variants-sha256; a warning line before the dev stage's work."""
    import convex_attention.cli.paper as paper_cli
    import convex_attention.paper.experiment as experiment

    missing = str(tmp_path / "site-packages" / "configs" / "experiment_variants.json")
    monkeypatch.setattr(paper_cli, "DEFAULT_VARIANTS_PATH", missing)
    out = tmp_path / "e"
    code, _, err = run(["experiment", "--quick", "--stage", "test", "--data-seed", "5", "--out", str(out)], capsys)
    assert_usage_error(code, err, "--variants", missing, "installed package", "--variants-sha256")
    assert len(err.strip().splitlines()) == 1 and "commit it before" not in err and not out.exists()
    started = []
    monkeypatch.setattr(experiment, "run_experiment", lambda *a, **k: started.append(k["stage"]) or {"report": ""})
    code, _, err = run(["experiment", "--quick", "--no-progress", "--out", str(out)], capsys)
    assert code == 0 and started == ["dev"], err
    (line,) = err.strip().splitlines()
    assert line.startswith("convex-attention experiment: warning: ") and "installed package" in line, line
    assert "no recorded test run" in line, line


# ---- ca_rev284 (hostile review of the session's diff)
def test_ca_rev284_a_batch_of_one_per_rank_is_a_usage_error_before_overwrite_removes_the_earlier_run(
        tmp_path, capsys, monkeypatch, no_work):
    """Under torchrun, 16x16 images with the bottleneck and --n-train no greater than the ranks give each rank a
    batch of one image before a BatchNorm over a 1x1 map.  train() refused it, but the command had already removed
    the earlier run (--overwrite) and then ended in a ConfigError traceback, exit 1.  Now: one usage line naming
    --n-train, exit 2, the earlier run's files kept, no training started."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("epoch\n1\n")
    argv = ["train", "--data", "synthetic-blobs", "--image-size", "16", "--width", "4", "--attention-blocks", "4",
            "5", "--n-train", "2", "--n-val", "8", "--batch-size", "4", "--epochs", "1", "--device", "cpu",
            "--no-progress", "--overwrite", "--out", str(out)]
    code, _, err = run(argv, capsys)
    assert_usage_error(code, err, "--n-train", "2 training image(s) over 2 rank(s)")
    assert len(err.strip().splitlines()) == 1, err
    assert (out / "metrics.csv").read_text() == "epoch\n1\n"
