import csv
import os
from dataclasses import replace

from convex_attention import cli
from convex_attention.paper.experiment import QUICK, run_experiment


def test_tiny_experiment_end_to_end(tmp_path):
    config = replace(QUICK, seeds=(0, 1), image_size=32, width=4, n_train=32, n_val=16, epochs=1, n_explain=2,
                     batch_size=8)
    out = str(tmp_path / "exp")
    result = run_experiment(config, out, progress=False, log=lambda *a: None)
    runs = list(csv.DictReader(open(os.path.join(out, "experiment.csv"))))
    assert len(runs) == 3 * 2
    assert {r["method"] for r in runs} == {"softmax", "learned_dual", "exact"}
    for r in runs:
        assert 0 <= float(r["val_balanced_acc"]) <= 1 and float(r["epoch_time_s"]) > 0
        if r["method"] == "exact":
            assert float(r["val_violation"]) <= 1e-5
    report = open(os.path.join(out, "experiment.md")).read()
    for word in ("val balanced acc", "violation", "time/epoch", "gradcam", "deeplift", "lrp",
                 "integrated_gradients", "input_x_gradient"):
        assert word in report
    assert len(result["summary"]) == 3


def test_experiment_command_rejects_bad_sizes(capsys):
    try:
        code = cli.main(["experiment", "--quick", "--image-size", "40", "--out", "/tmp/never"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2 and "pooling stack" in capsys.readouterr().err
