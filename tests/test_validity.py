"""The benchmark's validity checks (paper/validity.py) and ``convex-attention data check``."""
import json
import math
import os

import numpy as np
import pytest

from convex_attention import cli
from convex_attention.paper.data.synthetic import (
    MIMIC_TYPES,
    SyntheticBrightestLesions,
    SyntheticLesions,
    SyntheticRimLesions,
)
from convex_attention.paper.validity import (
    QUANTILES,
    CheckResult,
    accepted,
    brain_mask_features,
    check_brain_mask,
    check_location_free,
    check_maps_drive_ranking,
    check_pixel_map,
    check_uniform_attention,
    collect,
    location_free_features,
    run_checks,
)

N, SIZE = 160, 48  # a small instance: 160 training and 160 held-out images of 48 x 48


@pytest.fixture(scope="module")
def rim():
    return collect(SyntheticRimLesions(N, SIZE, seed=0)), collect(SyntheticRimLesions(N, SIZE, seed=10_000))


@pytest.fixture(scope="module")
def blobs():
    return collect(SyntheticLesions(N, SIZE, seed=0)), collect(SyntheticLesions(N, SIZE, seed=10_000))


@pytest.mark.slow  # end to end (a subprocess, a whole check or a benchmark run)
def test_the_new_generator_passes_the_checks(rim):
    (tr_img, tr_lab, tr_mask, _), (te_img, te_lab, te_mask, _) = rim
    a = check_location_free(tr_img, tr_lab, te_img, te_lab)
    b = check_pixel_map(tr_img, tr_mask, te_img, te_mask)
    assert a.ran and a.passed and a.value <= 0.60, a.line()
    assert b.ran and b.passed and b.value <= 0.30, b.line()
    assert b.detail["prevalence"] < b.value  # the map finds the signature, just not the lesion among the mimics


@pytest.mark.slow  # end to end (a subprocess, a whole check or a benchmark run)
def test_the_brightest_rule_passes_the_checks():
    """Every image holds a lesion and bright specks share the signatures: (a) and (b) hold at 64 x 64."""
    train = collect(SyntheticBrightestLesions(N, 64, difficulty=0.3, seed=0))
    test = collect(SyntheticBrightestLesions(N, 64, difficulty=0.3, seed=10_000))
    a = check_location_free(train[0], train[1], test[0], test[1])
    b = check_pixel_map(train[0], train[2], test[0], test[2])
    assert a.ran and a.passed, a.line()
    assert b.ran and b.passed and b.detail["prevalence"] < b.value, b.line()


@pytest.mark.slow  # end to end (a subprocess, a whole check or a benchmark run)
def test_the_old_generator_fails_the_location_free_check(blobs):
    """The point of check (a): the previous generator's label is readable from intensity statistics."""
    (tr_img, tr_lab, tr_mask, _), (te_img, te_lab, te_mask, _) = blobs
    a = check_location_free(tr_img, tr_lab, te_img, te_lab)
    assert a.ran and not a.passed and a.value > 0.70, a.line()
    b = check_pixel_map(tr_img, tr_mask, te_img, te_mask)
    assert not b.passed and b.value > 0.40, b.line()  # and one fixed map localises its lesions


@pytest.mark.slow  # end to end (a subprocess, a whole check or a benchmark run)
def test_the_pixel_map_check_fails_without_mimics():
    """With no mimic in lesion images, a per-pixel map finds the lesion: check (b) must say so."""
    train = collect(SyntheticRimLesions(100, SIZE, seed=0, mimic_rate=0.0))
    test = collect(SyntheticRimLesions(100, SIZE, seed=10_000, mimic_rate=0.0))
    b = check_pixel_map(train[0], train[2], test[0], test[2])
    assert b.ran and not b.passed and b.value > 0.5, b.line()


def test_location_free_features_ignore_where_pixels_are():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 4, 12, 12)).astype(np.float32)
    images[:, :, :2] = 0  # background rows: left out of the statistics
    shuffled = images.reshape(3, 4, -1)[:, :, rng.permutation(144)].reshape(3, 4, 12, 12)
    features = location_free_features(images)
    assert features.shape == (3, len(QUANTILES) * 16)
    assert np.allclose(features, location_free_features(shuffled))
    head = images[0, 0, 2:].ravel()
    assert features[0, :len(QUANTILES)] == pytest.approx(np.quantile(head, QUANTILES))


def test_pixel_ap_is_the_explanations_ap():
    import torch

    from convex_attention.paper.explain_metrics import average_precision
    from convex_attention.paper.validity import _average_precision

    rng = np.random.default_rng(1)
    for scores in (rng.normal(size=400), rng.integers(0, 4, 400).astype(float), np.zeros(400)):
        truth = rng.random(400) < 0.1
        expected = average_precision(torch.from_numpy(scores), torch.from_numpy(truth))
        assert _average_precision(scores, truth) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(_average_precision(scores, np.zeros(400, bool)))


def test_a_check_that_did_not_run_never_passes():
    images = np.zeros((12, 4, 8, 8), np.float32)
    one_class = np.ones(12, np.int64)
    a = check_location_free(images, one_class, images, one_class)
    assert not a.ran and not a.passed and a.status == "NOT RUN" and "both labels" in a.reason
    b = check_pixel_map(images, np.zeros((12, 8, 8), bool), images, np.zeros((12, 8, 8), bool))
    assert not b.ran and not b.passed
    nan = CheckResult("x", "t", "m", math.nan, 0.6)
    assert not nan.passed and nan.status == "FAIL"
    # (a) and (b) passed: every check accepted() requires besides the optional (c')
    good = [CheckResult("location_free", "t", "m", 0.5, 0.6), CheckResult("pixel_map", "t", "m", 0.2, 0.3)]
    not_run_c = check_uniform_attention(None, None)
    assert not not_run_c.passed and not not_run_c.ran
    assert accepted([*good, not_run_c])  # (c) is reported, never decides
    assert accepted([*good, check_uniform_attention(0.9, 0.89)])
    not_run_ranking = check_maps_drive_ranking(None)
    assert not not_run_ranking.passed and accepted([*good, not_run_ranking])  # data check: no trained models
    assert not accepted([*good, not_run_ranking], optional=())  # the dev stage needs it
    assert not accepted([*good, check_maps_drive_ranking([0.0] * 5)])
    assert not accepted([good[1], a])  # (a) is required
    assert not accepted([*good, nan]) and not accepted([])
    with pytest.raises(ValueError, match="NaN"):
        check_location_free(np.full((12, 4, 8, 8), np.nan, np.float32), one_class, images, one_class)


def test_uniform_attention_check():
    assert check_uniform_attention(0.90, 0.75).passed
    fail = check_uniform_attention(0.90, 0.85)
    assert fail.ran and not fail.passed and fail.value == pytest.approx(0.05)
    for bad in (1.5, math.nan, -0.1):
        with pytest.raises(ValueError, match="balanced accuracy"):
            check_uniform_attention(bad, 0.5)


def test_the_maps_drive_ranking_check():
    """(c′): the mean AUC drop over at least 5 seeds is at least 0.05 and its 95 % t-interval excludes 0."""
    from scipy.stats import t

    drops = [0.08, 0.06, 0.07, 0.09, 0.05]
    ok = check_maps_drive_ranking(drops)
    half = t.ppf(0.975, 4) * np.std(drops, ddof=1) / math.sqrt(5)
    assert ok.ran and ok.passed and ok.value == pytest.approx(0.07) and ok.ci95 == pytest.approx(half)
    assert "[0.050, 0.090]" in ok.note and ok.passes_below is False
    small = check_maps_drive_ranking([0.03, 0.04, 0.035, 0.045, 0.04])  # excludes 0, but below 0.05
    assert small.ran and not small.passed
    wide = check_maps_drive_ranking([0.4, -0.2, 0.3, -0.25, 0.1])  # mean 0.07, interval includes 0
    assert wide.ran and not wide.passed and wide.value - wide.ci95 < 0
    for few in ([0.1] * 4, None, []):
        r = check_maps_drive_ranking(few)
        assert not r.ran and not r.passed and "at least 5 dev seeds" in r.reason
    nan = check_maps_drive_ranking([0.1, 0.1, math.nan, 0.1, 0.1])
    assert not nan.ran and not nan.passed and "not finite" in nan.reason
    assert check_maps_drive_ranking([0.1, 0.1, 0.1], min_seeds=3).ci95 == pytest.approx(0.0, abs=1e-12)  # no spread


@pytest.mark.slow  # end to end (a subprocess, a whole check or a benchmark run)
def test_brain_mask_check_detects_an_outline_shortcut():
    rng = np.random.default_rng(0)

    def masks(n, shortcut):
        labels = np.arange(n) % 2
        brain = np.zeros((n, 32, 32), bool)
        for i, y in enumerate(labels):
            width = 12 + int(rng.integers(0, 6)) + (8 if shortcut and y else 0)
            brain[i, 4:28, 2:2 + width] = True
        return brain, labels

    features = brain_mask_features(masks(4, False)[0])
    assert features.shape == (4, 16 * 16 + 5)
    shortcut = check_brain_mask(*masks(80, True), *masks(80, True))
    assert shortcut.ran and not shortcut.passed and shortcut.value > 0.9
    fair = check_brain_mask(*masks(80, False), *masks(80, False))
    assert fair.ran and fair.passed, fair.line()


# ---------------------------------------------------------------- the command

def run(argv):
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse errors
        return exc.code


def _canned(monkeypatch, values):
    from convex_attention.cli import data as data_cli

    results = [CheckResult("location_free", "t", "held-out balanced accuracy", values[0], 0.6),
               CheckResult("pixel_map", "t", "held-out pixel AP", values[1], 0.3),
               check_maps_drive_ranking(None), check_uniform_attention(None, None)]
    monkeypatch.setattr(data_cli, "_datasets", lambda args: (list(range(20)), list(range(20)), "canned"))
    monkeypatch.setattr("convex_attention.paper.validity.run_checks", lambda *a, **k: results)


def test_data_check_exit_codes_output_and_json(tmp_path, monkeypatch, capsys):
    _canned(monkeypatch, (0.52, math.nan))
    out = str(tmp_path / "out")
    assert run(["data", "check", "--out", out]) == 1
    captured = capsys.readouterr()
    text = captured.out
    assert "location_free: held-out balanced accuracy 0.520 (passes if <= 0.60): PASS" in text
    assert "pixel_map: held-out pixel AP nan (passes if <= 0.30): FAIL" in text
    assert "uniform_attention: NOT RUN" in text and "maps_drive_ranking: NOT RUN" in text
    # the failed check's one line goes to stderr, as verify's
    assert captured.err.strip() == "data check: benchmark rejected (failed: pixel_map)"
    with open(os.path.join(out, "data_check.json")) as f:
        report = json.loads(f.read(), parse_constant=lambda c: pytest.fail(f"non-strict JSON token {c}"))
    assert report["accepted"] is False and report["checks"][1]["value"] is None
    assert [c["status"] for c in report["checks"]] == ["PASS", "FAIL", "NOT RUN", "NOT RUN"]
    _canned(monkeypatch, (0.52, 0.21))
    assert run(["data", "check"]) == 0
    text = capsys.readouterr().out
    assert "benchmark accepted so far: every check that can run without trained models holds" in text
    assert "(c') maps_drive_ranking is judged by the experiment's dev stage" in text
    # --quiet drops the table and the verdict line as it does verify's and bench's (their --help
    # says so); the exit status and data_check.json carry the verdict
    assert run(["data", "check", "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")
    _canned(monkeypatch, (0.52, math.nan))
    assert run(["data", "check", "--quiet"]) == 1
    assert capsys.readouterr() == ("", "data check: benchmark rejected (failed: pixel_map)\n")


@pytest.mark.parametrize("argv, message", [
    (["--data", "brats"], "needs --data-root"),
    (["--difficulty", "2"], "--difficulty must be in"),
    (["--mimic-rate", "-1"], "--mimic-rate must be in"),
    (["--data", "synthetic-blobs", "--mimic-rate", "2"], "--mimic-rate applies to --data synthetic"),
    (["--data", "synthetic-brightest", "--image-size", "16"], "too small for the synthetic benchmark"),
    (["--image-size", "16"], "too small for the synthetic benchmark"),
    (["--n", "5"], "argument --n: must be an integer from 20 to 10000000, got 5"),
    (["--val-fraction", "2"], "argument --val-fraction: must be a finite number in (0, 0.9], got 2"),  # once ignored
    (["--normalisation", "dataset"], "--normalisation applies to --data brats only"),
    (["--min-tumour-area", "0"], "argument --min-tumour-area"),
    (["--n", str(10 ** 12)], "argument --n: must be an integer from 20 to 10000000"),
    (["--image-size", "100000"], "argument --image-size: must be an integer from 1 to 8192"),
    (["--n", "1000000", "--image-size", "8192"], "pixels per channel and set, above"),
    (["--attention-bacc", "0.9"], "needs both --attention-bacc and --uniform-bacc"),
    (["--attention-bacc", "1.9", "--uniform-bacc", "0.5"], "--attention-bacc must be a balanced accuracy"),
    (["--cache-dir", "x"], "--cache-dir applies to --data brats only"),
    (["--mimic-types", "ring"], "invalid choice"),
    (["--difficulty", "nan"], "finite"),
    # synthetic options were silently ignored for brats (and --mimic-types for the blobs)
    (["--data", "brats", "--data-root", "r", "--difficulty", "0.3"], "--difficulty applies to the synthetic data only"),
    (["--data", "brats", "--data-root", "r", "--mimic-rate", "2"], "--mimic-rate applies to the synthetic data only"),
    (["--data", "brats", "--data-root", "r", "--mimic-types", "split"],
     "--mimic-types applies to the synthetic data only"),
    (["--data", "synthetic-blobs", "--mimic-types", "split"], "--mimic-types applies to --data synthetic"),
    # one past each bound (found by mutation testing)
    (["--n", "19"], "argument --n: must be an integer from 20 to 10000000, got 19"),
    (["--data", "brats", "--data-root", "r", "--image-size", "15"], "--image-size 15 is too small for brats"),
    (["--image-size", "31"], "--image-size 31 is too small for the synthetic benchmark"),
    (["--data", "synthetic-blobs", "--image-size", "15"], "--image-size 15 is too small (at least 16)"),
    (["--mimic-rate", "8.5"], "--mimic-rate must be in [0, 8]"),
    # refused before the dataset is built (it refused there, after the command had started: ca_rev74)
    (["--data", "synthetic-brightest", "--mimic-rate", "0.5"], "--mimic-rate must be at least 1"),
    (["--uniform-bacc", "0.6"], "needs both --attention-bacc and --uniform-bacc"),
    (["--attention-bacc", "0.9", "--uniform-bacc", "1.5"], "--uniform-bacc must be a balanced accuracy"),
    (["--wait"], "--wait applies with --out only"),
    (["--data-root", "r"], "--data-root applies to --data brats only"),
])
def test_data_check_usage_errors(argv, message, capsys):
    assert run(["data", "check", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    # one line, named by the whole subcommand (before: "convex-attention data: error: ..." for checks after parsing)
    assert len(err.strip().splitlines()) == 1 and err.startswith("convex-attention data check: error:"), err


def test_a_data_error_met_by_the_checks_is_one_line_and_exit_2(monkeypatch, capsys):
    """Before: a ValueError raised while the checks read the images (a BraTS cache file
    damaged after the datasets were built) ended in a traceback, exit 1."""
    from convex_attention.cli import data as data_cli

    monkeypatch.setattr(data_cli, "_datasets", lambda args: (list(range(20)), list(range(20)), "canned"))

    def damaged(*args, **kwargs):
        raise ValueError("damaged cache file 'c/P-1.images.npy' (mmap length is greater than file size); delete "
                         "c/P-1.* (or the cache folder) and run again")

    monkeypatch.setattr("convex_attention.paper.validity.run_checks", damaged)
    assert run(["data", "check"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("convex-attention data check: error: damaged cache file 'c/P-1.images.npy'"), err


def test_data_check_refuses_a_set_that_would_reach_the_next_seeds_images(monkeypatch, capsys):
    """Before: --n 1000004 at 32x32 was accepted, though its last image was the held-out
    set's neighbour seed's first (image i of seed s is keyed s x 1000003 + i).  BraTS's --n
    caps the slices read and has no seed blocks: not refused for that reason."""
    from convex_attention.cli import data as data_cli

    monkeypatch.setattr(data_cli, "_datasets", lambda args: pytest.fail("the work started"))
    assert run(["data", "check", "--n", "1000004", "--image-size", "32"]) == 2
    err = capsys.readouterr().err
    assert "--n 1000004 images is too many: a set holds at most 1000003" in err
    assert len(err.strip().splitlines()) == 1
    from convex_attention.paper.config import check_set_size

    check_set_size("n", 1_000_004, 16, flag="--n", synthetic=False)  # what data check asks for brats


def test_data_check_takes_the_synthetic_defaults_when_not_given(monkeypatch):
    from convex_attention.cli import data as data_cli

    seen = {}
    monkeypatch.setattr(data_cli, "_datasets", lambda args: seen.update(vars(args)) or ([0] * 20, [0] * 20, "canned"))
    monkeypatch.setattr("convex_attention.paper.validity.run_checks", lambda *a, **k: [])
    run(["data", "check", "--quiet"])
    assert seen["difficulty"] == 0.5 and seen["mimic_types"] == list(MIMIC_TYPES) and seen["mimic_rate"] is None


def test_data_check_out_and_data_errors(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert run(["data", "check", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    os.makedirs(tmp_path / "empty")
    assert run(["data", "check", "--data", "brats", "--data-root", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "empty dataset" in err and "--data-root" in err and "Traceback" not in err


@pytest.mark.slow  # end to end (a subprocess, a whole check or a benchmark run)
def test_data_check_on_brats_reports_the_brain_mask_control(tmp_path, capsys):
    from test_data import _write_fake_brats

    root = str(tmp_path / "brats")
    _write_fake_brats(root, [f"Brats18_P_{i}" for i in range(10)], tumour_slices=(1, 2, 3))
    code = run(["data", "check", "--data", "brats", "--data-root", root, "--image-size", "48",
                "--val-fraction", "0.5", "--min-tumour-area", "100", "--cache-dir", str(tmp_path / "c")])
    text = capsys.readouterr().out
    assert code == 1  # the fake pieces differ in width: the outline alone gives the label away
    assert "brain_mask: held-out balanced accuracy 1.000 (passes if <= 0.60): FAIL" in text
    assert "location_free:" in text and "pixel_map:" in text
    assert os.path.isdir(tmp_path / "c") and not os.path.exists(os.path.join(root, ".convex_attention_cache"))
    assert run(["data", "check", "--data", "brats", "--data-root", root, "--image-size", "48", "--quiet",
                "--val-fraction", "0.5", "--min-tumour-area", "100", "--out", str(tmp_path / "o")]) == 1
    record = json.loads((tmp_path / "o" / "data_check.json").read_text())
    assert record["brats"] == {"data_root": root, "val_fraction": 0.5, "normalisation": "volume",
                               "min_tumour_area": 100}


@pytest.mark.slow  # end to end (a subprocess, a whole check or a benchmark run)
def test_run_checks_includes_the_brain_mask_check_only_with_brain_masks(rim):
    class Arrays:
        def __init__(self, arrays, brain=False):
            self.images, self.labels, self.masks, _ = arrays
            if brain:
                self.brain_mask = lambda i: self.images[i].any(0)

        def __len__(self):
            return 40

        def __getitem__(self, i):
            return self.images[i], self.labels[i], self.masks[i]

    train, test = rim
    assert collect(Arrays(train))[3] is None  # no brain masks: no check (d)
    with_brain = run_checks(Arrays(train, True), Arrays(test, True), attention_bacc=0.9, uniform_bacc=0.6)
    assert [r.name for r in with_brain] == ["location_free", "pixel_map", "maps_drive_ranking", "uniform_attention",
                                            "brain_mask"]
    assert not with_brain[2].ran and with_brain[3].passed and with_brain[4].ran


def test_the_data_source_is_named_data_in_train_experiment_and_data_check(capsys):
    """One flag for the data source everywhere; `--data` is matched exactly (never taken as a
    prefix of --data-root or --data-seed) and the old `--dataset` is refused."""
    parser = cli.build_parser()
    for argv in (["data", "check"], ["train"], ["experiment"]):
        args = parser.parse_args(argv + ["--data", "synthetic-blobs"])
        assert args.data == "synthetic-blobs", argv
    args = parser.parse_args(["data", "check", "--data", "brats", "--data-root", "r"])
    assert (args.data, args.data_root) == ("brats", "r")
    assert run(["data", "check", "--dataset", "synthetic"]) == 2
    assert "unrecognized arguments: --dataset" in capsys.readouterr().err


# ----------------------------------------------------------------------------- found by mutation testing


def test_balanced_accuracy_is_the_mean_of_both_class_recalls():
    """``_balanced_accuracy`` averages the recall of class 0 and of class 1, not one of them
    twice (found by mutation testing: recall of class 1 alone survived the fast suite)."""
    from convex_attention.paper.validity import _balanced_accuracy

    truth = np.array([0] * 10 + [1] * 10)
    predicted = np.array([0] * 10 + [1] * 5 + [0] * 5)  # recall 1.0 on class 0, 0.5 on class 1
    value, se = _balanced_accuracy(truth, predicted)
    assert value == pytest.approx(0.75)
    assert se == pytest.approx(0.5 * math.sqrt(0.0 / 10 + 0.25 / 10))
    flipped, _ = _balanced_accuracy(1 - truth, 1 - predicted)  # the recalls swap classes: same mean
    assert flipped == pytest.approx(0.75)


def test_cross_fitting_pools_each_set_with_its_own_predictions(monkeypatch):
    """The pooled held-out balanced accuracy pairs set B's labels with the predictions made
    on set B (and A's with A's); sets whose labels come in opposite orders expose a swapped
    concatenation (found by mutation testing).  The fit is replaced by one that reads the
    label off the feature, so the test takes milliseconds."""
    from convex_attention.paper import validity

    monkeypatch.setattr(validity, "_fit_predict",
                        lambda train_x, train_y, test_x: (test_x[:, 0].round().astype(int),
                                                          train_x[:, 0].round().astype(int), 1.0))
    y_a = np.array([0] * 10 + [1] * 10)
    y_b = y_a[::-1].copy()
    x_a, x_b = y_a[:, None].astype(float), y_b[:, None].astype(float)  # the label is the feature
    fit = validity._cross_fitted_bacc(x_a, y_a, x_b, y_b)
    assert fit["train_to_test"] == 1.0 and fit["test_to_train"] == 1.0
    assert fit["value"] == 1.0


def test_the_pixel_map_check_reports_the_best_candidate():
    """Check (b)'s number is the *best* candidate map's AP (the hardest to pass), on a tiny
    input where channel 0 is the lesion mask itself (found by mutation testing: ``min``
    in place of ``max`` survived the fast suite)."""
    rng = np.random.default_rng(0)

    def make(n):
        masks = np.zeros((n, 8, 8), bool)
        for i in range(n):
            r, c = rng.integers(0, 6, 2)
            masks[i, r:r + 2, c:c + 2] = True
        images = rng.uniform(1.0, 2.0, size=(n, 4, 8, 8)).astype(np.float32)
        images[:, 0] += 5.0 * masks
        return images, masks

    (tr_img, tr_mask), (te_img, te_mask) = make(6), make(6)
    b = check_pixel_map(tr_img, tr_mask, te_img, te_mask)
    candidates = b.detail["candidates"]
    assert b.value == max(candidates.values()) and b.detail["best"] == max(candidates, key=candidates.get)
    assert b.value == pytest.approx(1.0) and candidates["-channel0"] < 0.5
    assert not b.passed


def test_check_thresholds_are_inclusive_and_an_interval_touching_zero_fails():
    """Exactly on its threshold a check passes (``<=`` / ``>=``), and an interval whose
    lower end is exactly 0 does not exclude 0 (found by mutation testing)."""
    assert CheckResult("x", "t", "m", 0.6, 0.6).passed
    assert not CheckResult("x", "t", "m", 0.6000001, 0.6).passed
    assert CheckResult("x", "t", "m", 0.05, 0.05, passes_below=False, ci95=0.01).passed
    touching = CheckResult("x", "t", "m", 0.1, 0.05, passes_below=False, ci95=0.1)
    assert 0.1 - 0.1 == 0.0 and not touching.passed and touching.status == "FAIL"
    assert CheckResult("x", "t", "m", 0.1, 0.05, passes_below=False, ci95=0.0999).passed


def test_a_check_that_did_not_run_never_passes_whatever_its_number():
    """``ran`` False never passes, even with a number on the passing side, and its record says
    so (found by mutation testing: dropping the ``ran`` test survived this file)."""
    for below, value, threshold in ((True, 0.5, 0.6), (False, 0.5, 0.05)):
        r = CheckResult("x", "t", "m", value, threshold, passes_below=below, ran=False, reason="why")
        assert not r.passed and r.status == "NOT RUN" and r.line().startswith("x: NOT RUN (why)")
        assert r.to_dict()["passed"] is False and r.to_dict()["status"] == "NOT RUN"
    ok = CheckResult("x", "t", "m", 0.5, 0.6)
    assert ok.to_dict()["passed"] is True and ok.to_dict()["status"] == "PASS"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("below", [True, False])
def test_a_number_that_is_not_finite_never_passes(value, below):
    """NaN and +-Inf fail on either side of the threshold (found by mutation testing: without
    the finiteness test, -Inf passed an at-most check and +Inf an at-least one)."""
    r = CheckResult("x", "t", "m", value, 0.6 if below else 0.05, passes_below=below)
    assert not r.passed and r.status == "FAIL" and not accepted([r])


def test_location_free_features_include_min_and_max_over_head_pixels():
    """(a) takes quantiles with min and max included over the head pixels, those non-zero in
    *some* channel: a pixel zero in one channel only stays in (found by mutation testing)."""
    rng = np.random.default_rng(2)
    images = rng.normal(size=(2, 3, 10, 10)).astype(np.float32)
    images[:, :, :2] = 0  # background: zero in every channel
    images[:, 0, 2:4] = 0  # zero in channel 0 only: still head pixels
    features = location_free_features(images)
    q = len(QUANTILES)
    for i in range(2):
        head = images[i, :, 2:].reshape(3, -1)
        for c in range(3):
            got = features[i, c * q:(c + 1) * q]
            assert got[0] == pytest.approx(head[c].min()) and got[-1] == pytest.approx(head[c].max())
            assert got == pytest.approx(np.quantile(head[c], QUANTILES))
        sum01, diff01 = features[i, 3 * q:4 * q], features[i, 4 * q:5 * q]  # x_0 + x_1, x_0 - x_1 follow the channels
        assert sum01 == pytest.approx(np.quantile(head[0] + head[1], QUANTILES), abs=1e-5)
        assert diff01 == pytest.approx(np.quantile(head[0] - head[1], QUANTILES), abs=1e-5)


def test_the_checks_refuse_arrays_of_the_wrong_shape():
    """The documented shapes: images (N, C, H, W), labels (N,), masks (N, H, W) (found by
    mutation testing: dropping any of these tests survived)."""
    images, labels = np.ones((12, 4, 8, 8), np.float32), np.arange(12) % 2
    with pytest.raises(ValueError, match=r"images must be \(N, C, H, W\)"):
        check_location_free(images[:, 0], labels, images, labels)
    with pytest.raises(ValueError, match="labels must be"):
        check_location_free(images, labels[:-1], images, labels)
    masks = np.ones((12, 8, 8), bool)
    with pytest.raises(ValueError, match="masks must be"):
        check_pixel_map(images, masks, images, masks[:, :, :-1])


def _lesion_set(rng, n, n_empty=0, channel=0):
    """``n`` 8 x 8 images, the last ``n_empty`` without a lesion; ``channel`` carries the lesion."""
    masks = np.zeros((n, 8, 8), bool)
    for i in range(n - n_empty):
        r, c = rng.integers(0, 6, 2)
        masks[i, r:r + 2, c:c + 2] = True
    images = rng.uniform(1.0, 2.0, size=(n, 4, 8, 8)).astype(np.float32)
    images[:, channel] += 5.0 * masks
    return images, masks


def test_the_pixel_map_check_scores_lesion_images_only():
    """Images without a lesion have no AP and are left out of (b)'s mean; the prevalence is
    that of the lesion images' pixels (found by mutation testing)."""
    rng = np.random.default_rng(3)
    (tr_img, tr_mask), (te_img, te_mask) = _lesion_set(rng, 8, 2), _lesion_set(rng, 8, 3)
    b = check_pixel_map(tr_img, tr_mask, te_img, te_mask)
    assert b.ran and math.isfinite(b.value) and b.value == pytest.approx(1.0)
    lesion = np.concatenate([tr_mask[:6], te_mask[:5]])
    assert b.detail["n_lesion_images"] == 11 and b.detail["prevalence"] == pytest.approx(lesion.mean())
    assert b.detail["prevalence"] > np.concatenate([tr_mask, te_mask]).mean()


def test_the_pixel_map_check_scores_each_fit_on_the_other_set():
    """(b) is cross-fitted: the maps fitted on one set are scored on the other.  With the
    lesion in channel 0 in the training set and in channel 1 in the held-out set, a fit
    scored on its own set would find every lesion; scored on the other set it does not
    (found by mutation testing: scoring each fit on its own set survived)."""
    rng = np.random.default_rng(4)
    (tr_img, tr_mask), (te_img, te_mask) = _lesion_set(rng, 6, channel=0), _lesion_set(rng, 6, channel=1)
    b = check_pixel_map(tr_img, tr_mask, te_img, te_mask)
    weights = b.detail["weights_fitted_on_training_set"]
    assert all(int(np.argmax(w)) == 0 for w in weights.values())  # the training set's lesion channel
    candidates = b.detail["candidates"]
    assert candidates["logistic"] < 0.5 and candidates["logistic_balanced"] < 0.5, candidates
    assert b.value == max(candidates["+channel0"], candidates["+channel1"]) < 1.0


def test_the_uniform_attention_check_needs_both_numbers_and_takes_the_bounds():
    """One balanced accuracy missing: not run (never passed), not an error; 0 and 1 are
    balanced accuracies (found by mutation testing)."""
    for attention, uniform in ((0.9, None), (None, 0.6)):
        r = check_uniform_attention(attention, uniform)
        assert not r.ran and not r.passed and "--attention-bacc" in r.reason
        assert r.passes_below is False and "passes if balanced-accuracy gap >= 0.10" in r.line()
    assert check_uniform_attention(0.90, 0.85, min_gap=0.05).passed  # the gap asked for is the one used
    assert not check_maps_drive_ranking([0.08, 0.06, 0.07, 0.09, 0.05], min_drop=0.08).passed
    edge = check_uniform_attention(1.0, 0.0)
    assert edge.ran and edge.passed and edge.value == pytest.approx(1.0 - 0.0)


def test_the_checks_need_five_images_of_each_label_in_both_sets(monkeypatch):
    """At least 5 images of each label 0 and 1, in the training *and* the held-out set, else
    not run; a threshold given is the one recorded (found by mutation testing).  The fit is
    replaced by one that reads the label off a feature, so the test takes milliseconds."""
    from convex_attention.paper import validity

    monkeypatch.setattr(validity, "_fit_predict", lambda train_x, train_y, test_x: (
        (test_x[:, 0] < 0).astype(int), (train_x[:, 0] < 0).astype(int), 1.0))
    images = np.ones((15, 2, 4, 4), np.float32)
    ok = np.array([0] * 5 + [1] * 10)
    images[ok == 1] = -1.0  # feature 0 (channel 0's minimum) is below 0 for label 1
    for bad in (np.array([0] * 4 + [1] * 11), np.zeros(15, np.int64), np.array([0] * 5 + [1] * 5 + [2] * 5)):
        for train, test in ((bad, ok), (ok, bad)):
            r = check_location_free(images, train, images, test)
            assert not r.ran and not r.passed and "at least 5 of each" in r.reason
            assert not check_brain_mask(images[:, 0] > 0, train, images[:, 0] > 0, test).ran
    assert check_location_free(images, ok, images, ok).value == 1.0  # label read off: fails 0.60
    r = check_location_free(images, ok, images, ok, threshold=1.0)
    assert r.ran and r.threshold == 1.0 and r.passed


def test_the_pixel_map_check_needs_lesions_in_both_sets_and_records_its_threshold():
    rng = np.random.default_rng(5)
    (tr_img, tr_mask), (te_img, te_mask) = _lesion_set(rng, 6), _lesion_set(rng, 6, 6)
    for args in ((tr_img, tr_mask, te_img, te_mask), (te_img, te_mask, tr_img, tr_mask)):
        r = check_pixel_map(*args)
        assert not r.ran and not r.passed and "at least 5 image(s) with lesion pixels" in r.reason
    (te_img, te_mask) = _lesion_set(rng, 6)
    r = check_pixel_map(tr_img, tr_mask, te_img, te_mask, threshold=1.0)
    assert r.ran and r.threshold == 1.0 and r.passed  # the lesion channel reaches AP 1, not above


def test_the_fixed_maps_follow_the_synthetic_channel_order():
    """FLAIR + T2 - T1 in the channel order FLAIR, T1, T1ce, T2 (4 channels or more), and each
    channel with either sign."""
    from convex_attention.paper.validity import fixed_channel_maps

    maps = fixed_channel_maps(4)
    assert maps["flair+t2-t1"].tolist() == [1.0, -1.0, 0.0, 1.0]
    assert maps["-channel2"].tolist() == [0.0, 0.0, -1.0, 0.0] and len(maps) == 2 * 4 + 1
    assert "flair+t2-t1" not in fixed_channel_maps(3)


@pytest.mark.parametrize("argv", [
    ["--n", "20"], ["--image-size", "32"], ["--data", "synthetic-blobs", "--image-size", "16"],
    ["--data", "brats", "--data-root", "r", "--image-size", "16"],
    # BraTS's --n caps the slices read: no seed block refuses it (within the pixel bound)
    ["--data", "brats", "--data-root", "r", "--n", "1000004", "--image-size", "32"],
    ["--difficulty", "0"], ["--difficulty", "1"], ["--mimic-rate", "0"], ["--mimic-rate", "8"],
    ["--attention-bacc", "1", "--uniform-bacc", "0"],
])
def test_data_check_takes_every_bound_it_states(argv, monkeypatch, capsys):
    """Each documented range includes its ends (found by mutation testing: `<` for `<=` at
    each bound passed)."""
    _canned(monkeypatch, (0.52, 0.21))
    assert run(["data", "check", "--quiet", *argv]) == 0
    assert capsys.readouterr() == ("", "")


def test_data_check_builds_the_sets_its_options_ask_for(monkeypatch):
    """The training set at --seed, the held-out set at --seed + 10000 (the --help), both with
    the difficulty, mimic rate and mimic types given (found by mutation testing: each could be
    dropped)."""
    from convex_attention.paper.config import SYNTHETIC_GENERATORS
    from convex_attention.paper.data.synthetic import synthetic_dataset

    seen = {}
    monkeypatch.setattr("convex_attention.paper.validity.run_checks",
                        lambda train, held, **kwargs: seen.update(train=train, held=held) or [])
    run(["data", "check", "--quiet", "--n", "20", "--image-size", "32", "--seed", "7", "--difficulty", "0.3",
         "--mimic-rate", "1.5", "--mimic-types", "split"])
    options = dict(mimic_rate=1.5, mimic_types=("split",))
    for name, seed in (("train", 7), ("held", 10_007)):
        expected = synthetic_dataset(SYNTHETIC_GENERATORS["synthetic"], 20, 32, 4, 0.3, seed=seed, **options)
        got = seen[name]
        assert (got.mimic_rate, tuple(got.mimic_types), len(got)) == (1.5, ("split",), 20)
        assert all(np.array_equal(np.asarray(got[i][0]), np.asarray(expected[i][0])) for i in (0, 19)), name


def test_data_check_json_records_the_sets_and_the_checks_it_was_given(tmp_path, monkeypatch):
    """n_train and n_test are the sets' sizes (not --n: BraTS may have fewer slices), and the
    checks run at --seed with the two balanced accuracies each in its place (found by mutation
    testing: the training set's size twice, or the accuracies swapped, passed)."""
    from helpers import read_json

    from convex_attention.cli import data as data_cli

    seen = {}

    def checks(train, held, seed, attention_bacc, uniform_bacc):
        seen["seed"] = seed
        return [CheckResult("location_free", "t", "m", 0.5, 0.6), CheckResult("pixel_map", "t", "m", 0.1, 0.3),
                check_uniform_attention(attention_bacc, uniform_bacc)]

    monkeypatch.setattr(data_cli, "_datasets", lambda args: (list(range(25)), list(range(30)), "canned"))
    monkeypatch.setattr("convex_attention.paper.validity.run_checks", checks)
    out = tmp_path / "out"
    assert run(["data", "check", "--quiet", "--seed", "5", "--attention-bacc", "0.9", "--uniform-bacc", "0.6",
                "--out", str(out)]) == 0
    record = read_json(out / "data_check.json")
    assert (record["n_train"], record["n_test"], record["seed"], seen["seed"]) == (25, 30, 5, 5)
    gap = [c for c in record["checks"] if c["name"] == "uniform_attention"][0]
    assert gap["value"] == pytest.approx(0.9 - 0.6) and gap["status"] == "PASS"


def test_an_earlier_data_check_json_is_refused_before_the_lock_and_again_under_it(tmp_path, monkeypatch, capsys):
    """Refused before any work, without taking (or, with --wait, waiting for) the folder's lock;
    and one written by another run meanwhile, while this one waited for the lock, is refused
    under the lock (found by mutation testing: either check alone passed)."""
    import contextlib

    from convex_attention.cli import data as data_cli

    _canned(monkeypatch, (0.52, 0.21))
    real = data_cli.holding_out
    out = tmp_path / "out"
    out.mkdir()
    (out / "data_check.json").write_text('{"my": "precious"}')
    taken = []

    @contextlib.contextmanager
    def recording(*args, **kwargs):
        taken.append(args)
        with real(*args, **kwargs):
            yield

    monkeypatch.setattr(data_cli, "holding_out", recording)
    assert run(["data", "check", "--out", str(out)]) == 2
    assert "data_check.json" in capsys.readouterr().err and taken == []
    (out / "data_check.json").unlink()

    @contextlib.contextmanager
    def another_run_wrote_it(*args, **kwargs):
        with real(*args, **kwargs):
            (out / "data_check.json").write_text('{"theirs": true}')
            yield

    monkeypatch.setattr(data_cli, "holding_out", another_run_wrote_it)
    assert run(["data", "check", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "data_check.json" in err and "--overwrite" in err, err
    assert (out / "data_check.json").read_text() == '{"theirs": true}'


def test_a_brats_sample_is_a_seeded_random_subset_whose_brain_masks_follow_its_items():
    """``_Sample``: at most ``n`` distinct items, drawn by the seed (not the first ``n``), and
    ``brain_mask(i)`` is the mask of item ``i`` (found by mutation testing)."""
    from convex_attention.cli.data import _Sample

    class Slices:
        def __len__(self):
            return 100

        def __getitem__(self, i):
            return ("image", i)

        def brain_mask(self, i):
            return ("mask", i)

    samples = [_Sample(Slices(), 10, seed) for seed in (0, 1)]
    for s in samples:
        items = [s[i][1] for i in range(len(s))]
        assert len(s) == 10 and len(set(items)) == 10
        assert [s.brain_mask(i) for i in range(len(s))] == [("mask", i) for i in items]
    assert [s[i] for i in range(10)] != [("image", i) for i in range(10)]
    assert [samples[0][i] for i in range(10)] != [samples[1][i] for i in range(10)]
    assert len(_Sample(Slices(), 500, 0)) == 100  # at most n


def test_data_check_defaults_are_those_its_help_states():
    """--n and --image-size default to what their --help says (found by mutation testing)."""
    import re

    parser = cli.build_parser()
    args = parser.parse_args(["data", "check"])
    command = parser._subparsers._group_actions[0].choices["data"]._subparsers._group_actions[0].choices["check"]
    for action in command._actions:
        if action.dest in ("n", "image_size"):
            stated = re.search(r"\(default: (\d+)\)", action.help)
            assert stated and int(stated.group(1)) == getattr(args, action.dest) == action.default, action.dest


# ----------------------------------------------------------------------------- review ca_rev69


def test_ca_rev69_a_missing_deciding_check_is_not_accepted():
    # protocol.failed_checks counts a missing required check as failed; accepted() does not
    only_a = [CheckResult("location_free", "t", "m", 0.5, 0.60)]
    only_b = [CheckResult("pixel_map", "t", "m", 0.2, 0.30)]
    assert only_a[0].passed and only_b[0].passed
    assert not accepted(only_a)  # it gives True: (b) never ran, yet the benchmark is accepted
    assert not accepted(only_b)


def test_ca_rev69_ranking_check_refuses_a_mapping_and_values_that_are_not_auc_drops():
    per_seed = {0: 0.001, 1: 0.002, 2: 0.0, 3: 0.001, 4: 0.003}  # drops far below 0.05: a FAIL
    try:
        result = check_maps_drive_ranking(per_seed)
    except (TypeError, ValueError):
        result = None  # refusing the mapping is a fix too
    assert result is None or (result.value < 0.01 and not result.passed), result  # gives value 2.0 PASS
    with pytest.raises(ValueError):
        check_maps_drive_ranking([12.0, 10.0, 11.0, 13.0, 9.0])  # an AUC drop lies in [-1, 1]; percent passes


def test_ca_rev71_maps_drive_ranking_takes_a_numpy_integer_seed_count():
    result = check_maps_drive_ranking([0.05, 0.06, 0.07], min_seeds=np.int64(3))
    assert result.ran


# ---- ca_rev138 (strict xfail: review of 8f7bdd7)

def test_ca_rev138_a_data_check_that_cannot_write_its_json_fails_in_one_line(tmp_path, monkeypatch, capsys):
    """Run: data check --out OUT, where OUT/data_check.json cannot be written once the checks have run
    (the disk fills up: ENOSPC; or OUT removed under the run: FileNotFoundError). Expected: one line on
    stderr naming the reason, exit 1, as bench and verify do ('bench: stopped, a results file could not
    be written ...', 'verify: cannot write ...'). Observed (a real run, --n 20 --image-size 32, 2.2 s):
    OSError [Errno 28] escapes cli.main: a traceback, exit 1 from the interpreter (cli/data.py:
    write_json in _data_check is not guarded)."""
    import errno

    from convex_attention.io import files

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    _canned(monkeypatch, (0.52, 0.21))
    monkeypatch.setattr(files, "write_json", full)
    try:
        code = run(["data", "check", "--quiet", "--out", str(tmp_path / "dc")])
    except OSError as err:
        code = f"uncaught {err!r}"
    err = capsys.readouterr().err
    assert code == 1, code
    assert "No space left on device" in err and len(err.strip().splitlines()) == 1, err


# ---- ca_rev143 (strict xfail: review of ea9699c)

def test_ca_rev143_the_pixel_map_check_does_not_pass_on_one_lesion_image_per_set():
    """Run: a training and a held-out set of 20 noise images 16 x 16, each with one lesion image (a 2 x 2
    mask, no signal); check_pixel_map.  Expected: not run (or not passed): an AP averaged over two
    images says nothing of the benchmark, and (a) on these labels is NOT RUN ('at least 5 of each').
    Observed: ran, value 0.053, PASS (n_lesion_images 2)."""
    rng = np.random.default_rng(0)
    sets = []
    for _ in range(2):
        images = rng.uniform(1.0, 2.0, (20, 4, 16, 16)).astype(np.float32)
        masks = np.zeros((20, 16, 16), bool)
        masks[0, 2:4, 2:4] = True
        sets.append((images, masks))
    (tr_img, tr_mask), (te_img, te_mask) = sets
    labels = np.array([1] + [0] * 19)
    assert not check_location_free(tr_img, labels, te_img, labels).ran  # the sibling check's rule
    b = check_pixel_map(tr_img, tr_mask, te_img, te_mask)
    assert not b.passed, (b.value, b.detail["n_lesion_images"])


# ---- ca_rev151 (strict xfail: review of 821b769)
def test_ca_rev151_a_check_s_terminal_line_shows_a_value_on_its_side_of_the_bar():
    from convex_attention.paper.validity import CheckResult

    check = CheckResult("pixel_map", "t", "ap", 0.3004, 0.30)  # as ca_rev150's validity-table test
    assert check.status == "FAIL"  # holds today
    line = check.line()  # what `data check` and the dev stage's log print
    value = float(line.split("ap ")[1].split()[0])
    assert value > check.threshold, line


# ---- ca_rev153 (strict xfail: review of edb29d2)
def test_ca_rev153_min_ranking_seeds_keeps_its_doc_comment():
    import inspect

    from convex_attention.paper import validity

    lines = inspect.getsource(validity).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("MIN_RANKING_SEEDS ="))
    assert lines[at - 1].startswith("#: (c′) is judged over"), lines[at - 3:at + 1]  # a blank line today


# ---- ca_rev177 (review of b20d240; its strict xfails now pass)

def test_ca_rev177_a_rejected_data_check_that_cannot_write_its_json_fails_in_one_line(tmp_path, monkeypatch,
                                                                                      capsys):
    """Run: data check --quiet --out OUT with (b) failing and OUT/data_check.json unwritable (ENOSPC).
    Expected: one line on stderr, exit 1 (ca_rev138's rule, tested there only for an accepted check).
    Observed: two lines, 'data check: benchmark rejected (failed: pixel_map)' then 'data check: cannot
    write ...' (cli/data.py: _data_check prints the rejection before it writes the json)."""
    import errno

    from convex_attention.io import files

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    _canned(monkeypatch, (0.52, 0.45))  # pixel_map fails
    monkeypatch.setattr(files, "write_json", full)
    code = run(["data", "check", "--quiet", "--out", str(tmp_path / "dc")])
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("drops", [[True] * 5, np.ones(5, bool)])
def test_ca_rev177_the_ranking_check_does_not_pass_on_booleans(drops):
    """Run: check_maps_drive_ranking([True] * 5) (a flag where each seed's AUC drop belongs).
    Expected: refused (TypeError/ValueError, as a mapping or a drop outside [-1, 1] is) or not passed:
    a bool is no difference of two AUCs (the generators and min_seeds refuse bools).  Observed: PASS,
    value 1.0, ci95 0.0 (validity.py: float(d) reads True as 1.0; only mappings and |v| > 1 refused)."""
    try:
        result = check_maps_drive_ranking(drops)
    except (TypeError, ValueError):
        return
    assert not result.passed, (result.value, result.ci95)


def test_the_uniform_attention_gap_takes_numpy_floats_and_refuses_bools():
    """(c) reads any real balanced accuracy (NumPy's float32 had been refused as "not a balanced
    accuracy") and never a bool (True had read as 1.0: ca_rev177)."""
    from convex_attention.paper.validity import check_uniform_attention

    result = check_uniform_attention(np.float32(0.75), np.float64(0.5))
    assert result.ran and result.value == pytest.approx(0.25)
    for bad in (True, np.bool_(False)):
        with pytest.raises(ValueError, match="balanced accuracy"):
            check_uniform_attention(bad, 0.5)


# ---- ca_rev183 (review of c2c898e; its strict xfails now pass)


def test_ca_rev183_maps_drive_ranking_refuses_boolean_tensors_as_auc_drops():
    """Run: ``check_maps_drive_ranking(torch.tensor([True] * 5))`` and with ``[np.array(True)] * 5``.
    Expected: the TypeError that ``[True] * 5`` and ``np.array([True] * 5)`` get since 02ec3b8 (its
    docstring: "TypeError for a bool among the drops (float(True) is 1.0)").  Observed: both run
    and pass, value 1.0 (validity.py ``check_maps_drive_ranking``: ``isinstance(d, (bool,
    np.bool_))`` misses a 0-d bool tensor and a 0-d bool array, which ``float`` reads as 1.0)."""
    import torch

    with pytest.raises(TypeError, match="bool"):
        check_maps_drive_ranking(np.array([True] * 5))  # refused: the oracle
    for drops in (torch.tensor([True] * 5), [np.array(True)] * 5):
        with pytest.raises(TypeError, match="bool"):
            check_maps_drive_ranking(drops)


# ---- ca_rev207 (mutation review of 0c62772)


def test_ca_rev207_balanced_accuracy_is_scikit_learns_on_unbalanced_classes():
    """Kills ``_balanced_accuracy`` returning plain accuracy: the earlier test had 10 images
    of each class, where the two agree.  Oracle: scikit-learn's ``balanced_accuracy_score``."""
    from sklearn.metrics import balanced_accuracy_score

    from convex_attention.paper.validity import _balanced_accuracy

    rng = np.random.default_rng(207)
    for n0, n1 in ((30, 7), (6, 40), (13, 14)):
        truth = np.array([0] * n0 + [1] * n1)
        predicted = rng.integers(0, 2, n0 + n1)
        value, _ = _balanced_accuracy(truth, predicted)
        assert value == pytest.approx(balanced_accuracy_score(truth, predicted), abs=1e-12)
    truth, predicted = np.array([0] * 18 + [1] * 2), np.zeros(20, int)  # all "healthy": accuracy 0.9, chance
    assert _balanced_accuracy(truth, predicted)[0] == pytest.approx(0.5)


def test_ca_rev207_cross_fitting_pools_the_held_out_predictions_of_sets_of_unequal_size(monkeypatch):
    """Kills (i) ``value`` taken from one direction only, (ii) ``value`` as the mean of the two
    directions' balanced accuracies rather than that of the pooled predictions, (iii)
    ``train_to_test`` and ``test_to_train`` swapped, (iv) ``training_fit`` pairing each set's
    labels with the other set's predictions.  The fit is replaced by one that reads its
    prediction off the feature; oracle: scikit-learn's ``balanced_accuracy_score``."""
    from sklearn.metrics import balanced_accuracy_score as bacc

    from convex_attention.paper import validity

    monkeypatch.setattr(validity, "_fit_predict",
                        lambda train_x, train_y, test_x: (test_x[:, 0].astype(int), train_x[:, 0].astype(int), 1.0))
    y_a, p_a = np.array([0] * 12 + [1] * 8), np.array([0] * 12 + [1] * 2 + [0] * 6)  # A predicted poorly
    y_b, p_b = np.array([0] * 5 + [1] * 25), np.array([0] * 4 + [1] * 26)  # B predicted well
    fit = validity._cross_fitted_bacc(p_a[:, None].astype(float), y_a, p_b[:, None].astype(float), y_b)
    assert fit["train_to_test"] == pytest.approx(bacc(y_b, p_b))
    assert fit["test_to_train"] == pytest.approx(bacc(y_a, p_a))
    assert fit["train_to_test"] != pytest.approx(fit["test_to_train"])
    pooled = bacc(np.r_[y_b, y_a], np.r_[p_b, p_a])
    assert fit["value"] == pytest.approx(pooled)
    assert pooled != pytest.approx((bacc(y_b, p_b) + bacc(y_a, p_a)) / 2)  # the mutant (ii) would differ
    assert fit["training_fit"] == pytest.approx((bacc(y_a, p_a) + bacc(y_b, p_b)) / 2)


def test_ca_rev207_the_location_free_fit_is_standardised_and_chosen_by_balanced_accuracy(monkeypatch):
    """Kills (i) the StandardScaler left out of the pipeline: a label carried by a feature at
    a scale of 1e-4 is then out of reach of the L2 penalty, and the fit predicts one class;
    (ii) the cross-validation scored by plain accuracy instead of balanced accuracy."""
    from sklearn import model_selection

    from convex_attention.paper.validity import _fit_predict

    rng = np.random.default_rng(207)
    y = np.arange(40) % 2
    x = np.stack([1e-4 * (y + rng.normal(0, 0.1, 40)), rng.normal(0, 1.0, 40)], 1)
    predicted, on_training, _ = _fit_predict(x, y, x)
    assert (predicted == y).mean() >= 0.95 and (on_training == y).mean() >= 0.95

    seen = {}
    real = model_selection.GridSearchCV

    def recording(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(model_selection, "GridSearchCV", recording)
    _fit_predict(x, y, x)
    assert seen["scoring"] == "balanced_accuracy" and seen["cv"] == 5


def test_ca_rev207_pixel_fits_give_weights_on_the_raw_channels():
    """Kills ``_pixel_fits`` returning the standardised fit's coefficients (``coef_`` not
    divided by the channels' spread, or multiplied by it): with the lesion in a channel of
    spread 0.01 beside a pure-noise channel of spread 100, only weights on the raw channels
    rank the lesion first.  Oracle: the AP of the weighted map against the mask."""
    from sklearn.metrics import average_precision_score

    from convex_attention.paper.validity import _pixel_fits

    rng = np.random.default_rng(207)
    masks = np.zeros((4, 12, 12), bool)
    masks[:, 3:7, 4:8] = True
    images = np.stack([1.0 + 0.01 * masks + rng.normal(0, 0.001, masks.shape),
                       500.0 + rng.normal(0, 100.0, masks.shape)], 1)
    for name, w in _pixel_fits(images, masks, 0, 10**6).items():
        score = np.tensordot(w, images, axes=([0], [1]))
        assert average_precision_score(masks.ravel(), score.ravel()) > 0.99, (name, w)


def test_ca_rev207_pixel_fits_leave_out_the_background():
    """Kills ``_pixel_fits`` fitting every pixel, the zero background too: inside the head the
    lesion is darker than the tissue (weight < 0 on the channel), but counting the many
    background zeros, darker than the lesion, the fit turns the sign and the map ranks the
    lesion below the tissue."""
    from convex_attention.paper.validity import _pixel_fits

    masks = np.zeros((2, 40, 40), bool)
    masks[:, 10:13, 10:13] = True
    images = np.zeros((2, 1, 40, 40))
    images[:, 0, 8:16, 8:16] = 2.0  # the head: tissue at 2, the lesion at 1, the background at 0
    images[:, 0][masks] = 1.0
    for name, w in _pixel_fits(images, masks, 0, 10**6).items():
        assert w[0] < 0, (name, w)


def _rev207_pixel_map(monkeypatch):
    """Check (b) on 4-channel images of unequal sets whose fitted weights are replaced: the
    class-weighted fit maps channel 2 (the lesion, noisy), the other fit its negation; the
    lesion is exactly FLAIR + T2 - T1 (channels 0 + 3 - 1)."""
    from convex_attention.paper import validity

    weights = {"logistic_balanced": np.array([0.0, 0.0, 1.0, 0.0]), "logistic": np.array([0.0, 0.0, -1.0, 0.0])}
    monkeypatch.setattr(validity, "_pixel_fits", lambda images, masks, seed, max_pixels: dict(weights))
    rng = np.random.default_rng(207)

    def make(n, lesion):
        masks = np.zeros((n, 8, 8), bool)
        for i in range(lesion):
            r, c = rng.integers(0, 5, 2)
            masks[i, r:r + 1 + i % 3, c:c + 2] = True
        noise = rng.uniform(0.0, 3.0, (n, 8, 8))
        images = np.stack([masks + noise, noise, masks + rng.normal(0, 0.6, (n, 8, 8)), np.zeros((n, 8, 8))], 1)
        return images.astype(np.float32), masks

    sets = make(9, 6), make(14, 11)
    return check_pixel_map(*sets[0], *sets[1]), sets


def test_ca_rev207_pixel_map_candidates_are_the_mean_ap_over_all_lesion_images(monkeypatch):
    """Kills a candidate's AP taken as the median of the per-image APs (and the mean of each
    set's mean): oracle, scikit-learn's ``average_precision_score`` per lesion image of both
    sets, averaged over all of them."""
    from sklearn.metrics import average_precision_score

    b, sets = _rev207_pixel_map(monkeypatch)
    for name, w in (("+channel2", np.eye(4)[2]), ("-channel0", -np.eye(4)[0])):
        aps = [average_precision_score(m.ravel(), np.tensordot(w, img, axes=1).ravel())
               for images, masks in sets for img, m in zip(images, masks) if m.any()]
        assert len(aps) == 17 and b.detail["candidates"][name] == pytest.approx(np.mean(aps), abs=1e-9)
        assert np.mean(aps) != pytest.approx(np.median(aps), abs=1e-3)


def test_ca_rev207_pixel_map_pooled_ap_and_best_single_channel(monkeypatch):
    """Kills (i) the pooled AP read off the plain fit's map (``maps[1]``) instead of the
    class-weighted fit's (``maps[0]``); (ii) the best single channel taken over every
    candidate (FLAIR + T2 - T1, here exact, too).  Oracle: scikit-learn's AP over all
    pixels of each set, averaged over the two sets."""
    from sklearn.metrics import average_precision_score

    b, sets = _rev207_pixel_map(monkeypatch)
    pooled = np.mean([average_precision_score(m.ravel(), img[:, 2].ravel()) for img, m in sets])
    assert b.detail["pooled_ap"] == pytest.approx(pooled, abs=1e-9)
    candidates = b.detail["candidates"]
    assert b.detail["best"] == "flair+t2-t1" and b.value == pytest.approx(1.0)
    single = max(v for k, v in candidates.items() if k.startswith(("+channel", "-channel")))
    assert b.detail["best_single_channel_ap"] == pytest.approx(single) and single < 0.99


def test_ca_rev207_ranking_check_is_the_mean_with_its_t_interval_and_takes_a_drop_of_one():
    """Kills (i) the mean of the drops read as their median; (ii) a drop of exactly 1 (an AUC
    of 1 falling to 0) refused as outside [-1, 1].  Oracle: scipy's t-interval."""
    from scipy import stats

    drops = [0.01, 0.02, 0.03, 0.04, 0.40]
    c = check_maps_drive_ranking(drops)
    low, high = stats.t.interval(0.95, len(drops) - 1, loc=np.mean(drops), scale=stats.sem(drops))
    assert c.value == pytest.approx(np.mean(drops)) and c.ci95 == pytest.approx((high - low) / 2)
    assert c.passed == (np.mean(drops) >= 0.05 and low > 0)
    whole = check_maps_drive_ranking([1.0] * 5)
    assert whole.ran and whole.value == 1.0 and whole.passed


def test_ca_rev207_brain_mask_features_against_a_brute_force_oracle():
    """Kills (i) the last non-empty row/column one past the mask; (ii) the row and column
    extents swapped; (iii) the cells' area summed instead of its fraction.  On a non-square
    raster, against loops over each image."""
    rng = np.random.default_rng(207)
    N, H, W, g = 3, 32, 48, 16
    brain = np.zeros((N, H, W), bool)
    for i in range(N):
        r0, c0 = rng.integers(0, 10, 2)
        brain[i, r0:r0 + 12 + i, c0:c0 + 20 + 3 * i] = True
    brain[2] = False  # an empty mask: first = n, last = -1
    features = brain_mask_features(brain, grid=g)
    for i in range(N):
        b = brain[i]
        cells = [b[r * H // g:(r + 1) * H // g, c * W // g:(c + 1) * W // g].mean() for r in range(g) for c in range(g)]
        rows, cols = np.flatnonzero(b.any(1)), np.flatnonzero(b.any(0))
        first_last = lambda idx, n: [idx[0] / n, idx[-1] / n] if len(idx) else [1.0, -1.0 / n]  # noqa: E731
        expected = cells + [b.mean()] + first_last(rows, H) + first_last(cols, W)
        np.testing.assert_allclose(features[i], expected, atol=1e-12)


def test_ca_rev207_collect_takes_at_most_limit_images():
    """Kills ``collect`` ignoring ``limit`` (``data check --limit`` and ``run_checks(limit=)``
    then check every image); brain masks follow the same images."""

    class Items(list):
        def brain_mask(self, i):
            return np.full((4, 4), i % 2 == 0)

    items = Items((np.full((2, 4, 4), i, np.float32), i % 2, np.zeros((4, 4), bool)) for i in range(7))
    images, labels, masks, brain = collect(items, limit=3)
    assert images.shape == (3, 2, 4, 4) and labels.tolist() == [0, 1, 0] and masks.shape == (3, 4, 4)
    assert brain.shape == (3, 4, 4) and brain[:, 0, 0].tolist() == [True, False, True]
    assert len(collect(items)[1]) == 7 and len(collect(items, limit=50)[1]) == 7


def test_ca_rev207_pixel_fits_subsample_to_max_pixels(monkeypatch):
    """Kills ``_pixel_fits`` ignoring ``max_pixels`` (the command's default 400 images of 48 x
    48 hold 920k head pixels, above the 200k cap): each fit sees exactly ``max_pixels``
    pixels, drawn by the seed."""
    from sklearn.linear_model import LogisticRegression

    from convex_attention.paper.validity import _pixel_fits

    rows = []
    real_fit = LogisticRegression.fit
    monkeypatch.setattr(LogisticRegression, "fit", lambda self, x, y, *a, **k: (rows.append(len(x)),
                                                                                 real_fit(self, x, y, *a, **k))[1])
    rng = np.random.default_rng(207)
    masks = rng.random((3, 10, 10)) < 0.3
    images = (1.0 + masks[:, None] + rng.normal(0, 1.0, (3, 2, 10, 10))).astype(np.float32)
    a, b = _pixel_fits(images, masks, 0, 120), _pixel_fits(images, masks, 1, 120)
    assert rows == [120] * 4
    assert not np.allclose(a["logistic"], b["logistic"])  # another seed, other pixels


# ---- ca_rev267 (hostile review of paper/validity.py)

def _ca_rev267_drops(lower: float, mean: float = 0.06) -> list[float]:
    """Five drops of mean ``mean`` whose 95 % t-interval's lower end is ``lower``."""
    from scipy.stats import t

    base = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    unit = t.ppf(0.975, 4) * base.std(ddof=1) / math.sqrt(5)
    return list(mean + (mean - lower) / unit * base)


def test_ca_rev267_ranking_interval_lower_end_shown_on_its_side_of_zero():
    """(c′) passes only when its interval's lower end is above 0: the note printed that end at
    3 decimals, 'interval [0.000, 0.120] must exclude 0' beside PASS (lower end 1e-4) and
    beside FAIL alike."""
    passed = check_maps_drive_ranking(_ca_rev267_drops(1e-4))
    assert passed.status == "PASS" and "interval [0.000," not in passed.note
    assert float(passed.note.split("interval [")[1].split(",")[0]) > 0
    failed = check_maps_drive_ranking(_ca_rev267_drops(-1e-4))
    assert failed.status == "FAIL" and float(failed.note.split("interval [")[1].split(",")[0]) < 0


def test_ca_rev267_rule_names_the_interval_the_status_reads():
    """A mean drop of 0.06 with an interval reaching below 0 FAILs: its line (and the reports'
    table, which print the same rule) had said 'passes if >= 0.05' alone beside that FAIL."""
    from convex_attention.paper.reports import validity_lines

    r = check_maps_drive_ranking(_ca_rev267_drops(-0.01))
    assert r.value >= 0.05 and r.status == "FAIL"
    assert "(passes if >= 0.05, 95 % interval above 0): FAIL" in r.line()
    assert "| >= 0.05, 95 % interval above 0 | FAIL |" in "\n".join(validity_lines([r], "checks"))
    below = CheckResult("location_free", "t", "m", 0.5, 0.60)
    assert below.rule == "<= 0.60" and "(passes if <= 0.60): PASS" in below.line()


def test_ca_rev267_negative_half_width_passes_nothing():
    """A half-width below 0 made ``value - ci95 > 0`` hold for any mean above the bar: a (c′)
    whose recorded interval was negative passed, and a variants file saying so was recomputed
    as consistent."""
    r = CheckResult("maps_drive_ranking", "t", "m", 0.06, 0.05, passes_below=False, ci95=-0.5)
    assert not r.passed
    assert CheckResult("maps_drive_ranking", "t", "m", 0.06, 0.05, passes_below=False, ci95=0.0).passed
