import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from convex_attention.paper.data import SyntheticLesions
from convex_attention.paper.train import (
    METRIC_COLUMNS,
    TrainConfig,
    augment,
    balanced_accuracy,
    train,
)

TINY = dict(image_size=32, width=4, n_train=48, n_val=24, batch_size=8, difficulty=0.0, progress=False,
            device="cpu")


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_training_lowers_the_loss_and_writes_metrics_and_checkpoints(tmp_path):
    out = str(tmp_path / "run")
    result = train(TrainConfig(out=out, method="learned_dual", epochs=4, lr=3e-3, augment=False, **TINY))
    rows = read(os.path.join(out, "metrics.csv"))
    assert tuple(rows[0]) == METRIC_COLUMNS and len(rows) == 4
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert os.path.exists(os.path.join(out, "best.pt")) and os.path.exists(os.path.join(out, "last.pt"))
    assert 0 <= float(rows[-1]["val_balanced_acc"]) <= 1 and float(rows[-1]["val_violation"]) >= 0
    assert json.load(open(os.path.join(out, "config.json")))["method"] == "learned_dual"
    assert result["model"].config.method == "learned_dual"


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    out = str(tmp_path / "run")
    train(TrainConfig(out=out, method="exact", epochs=1, **TINY))
    train(TrainConfig(out=out, method="exact", epochs=3, resume=os.path.join(out, "last.pt"), **TINY))
    rows = read(os.path.join(out, "metrics.csv"))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(float(r["val_violation"]) <= 1e-5 for r in rows)


def test_wrong_channel_count_and_empty_dataset(tmp_path):
    data = (SyntheticLesions(8, 32, channels=3), SyntheticLesions(4, 32, channels=3))
    with pytest.raises(ValueError, match="3 channels but the model expects 4"):
        train(TrainConfig(out=str(tmp_path / "a"), epochs=1, **TINY), datasets=data)
    with pytest.raises(ValueError, match="at least one image"):
        train(TrainConfig(out=str(tmp_path / "b"), epochs=1, **{**TINY, "n_train": 0}))


def test_augment_keeps_shapes_and_is_seeded():
    x = torch.randn(4, 4, 32, 32)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_balanced_accuracy():
    pred = torch.tensor([1, 1, 1, 0])
    target = torch.tensor([1, 1, 0, 0])
    assert balanced_accuracy(pred, target, 2) == 0.75


def test_ddp_two_processes_end_with_identical_weights(tmp_path):
    out = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "convex_attention.cli", "train", "--method", "learned_dual", "--image-size", "32", "--width", "4",
           "--n-train", "32", "--n-val", "8", "--epochs", "2", "--batch-size", "8", "--device", "cpu",
           "--out", out, "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = json.load(open(os.path.join(out, "ddp_check.json")))
    assert check["world_size"] == 2 and len(check["digests"]) == 2
    assert check["identical"] and check["digests"][0] == check["digests"][1]
    assert check["parameter_digests"][0] == check["parameter_digests"][1]
    rows = read(os.path.join(out, "metrics.csv"))
    assert len(rows) == 2  # rank 0 alone logs
