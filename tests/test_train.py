import contextlib
import csv
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import read_json

from convex_attention.paper.data import SyntheticLesions
from convex_attention.paper.models import AttentionUNet, read_checkpoint
from convex_attention.paper.train import (
    METRIC_COLUMNS,
    TrainConfig,
    augment,
    balanced_accuracy,
    classification_metrics,
    recompute_batchnorm,
    train,
)

TINY = dict(image_size=32, width=4, n_train=48, n_val=24, batch_size=8, difficulty=0.0, progress=False,
            device="cpu")


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_training_lowers_the_loss_and_writes_metrics_and_checkpoints(tmp_path):
    out = str(tmp_path / "run")
    result = train(TrainConfig.build(out=out, method="learned_dual", epochs=4, lr=3e-3, augment=False, **TINY))
    rows = read(os.path.join(out, "metrics.csv"))
    assert tuple(rows[0]) == METRIC_COLUMNS and len(rows) == 4
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert os.path.exists(os.path.join(out, "best.pt")) and os.path.exists(os.path.join(out, "last.pt"))
    assert 0 <= float(rows[-1]["val_balanced_acc"]) <= 1 and float(rows[-1]["val_violation"]) >= 0
    assert read_json(os.path.join(out, "config.json"))["method"] == "learned_dual"
    assert result["model"].config.method == "learned_dual"


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(tmp_path):
    out = str(tmp_path / "run")
    train(TrainConfig.build(out=out, method="exact", epochs=1, **TINY))
    train(TrainConfig.build(out=out, method="exact", epochs=3, resume=os.path.join(out, "last.pt"), **TINY))
    rows = read(os.path.join(out, "metrics.csv"))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(float(r["val_violation"]) <= 1e-5 for r in rows)


def test_wrong_channel_count_and_empty_dataset(tmp_path):
    data = (SyntheticLesions(8, 32, channels=3), SyntheticLesions(4, 32, channels=3))
    with pytest.raises(ValueError, match="3 channels but the model expects 4"):
        train(TrainConfig.build(out=str(tmp_path / "a"), epochs=1, **TINY), datasets=data)
    with pytest.raises(ValueError, match="n_train must be an integer from 1"):
        train(TrainConfig.build(out=str(tmp_path / "b"), epochs=1, **{**TINY, "n_train": 0}))
    data = (SyntheticLesions(8, 64), SyntheticLesions(4, 64))
    with pytest.raises(ValueError, match="64x64 but the model is built for 32x32"):
        train(TrainConfig.build(out=str(tmp_path / "c"), epochs=1, **TINY), datasets=data)
    assert not any(os.listdir(tmp_path))  # refused before anything was written


def test_augment_keeps_shapes_and_is_seeded():
    x = torch.randn(4, 4, 32, 32)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_balanced_accuracy():
    pred = torch.tensor([1, 1, 1, 0])
    target = torch.tensor([1, 1, 0, 0])
    assert balanced_accuracy(pred, target, 2) == 0.75


def test_balanced_accuracy_of_one_class_is_nan_not_a_perfect_score():
    """Before: 1.0 for a validation set of one class (metrics.csv, the log line)."""
    from convex_attention.paper.train import classification_metrics

    assert math.isnan(balanced_accuracy(torch.tensor([0, 0]), torch.tensor([0, 0]), 2))
    metrics = classification_metrics(torch.tensor([[2.0, 0.0], [1.0, 0.5]]), torch.tensor([0, 0]))
    assert math.isnan(metrics["val_balanced_acc"]) and math.isnan(metrics["val_auc"])


def test_a_validation_set_without_every_class_is_refused_before_training(tmp_path):
    from convex_attention.paper.train import build_checked_datasets

    with pytest.raises(ValueError, match=r"validation set \(1 image\) holds no image of class 1.*--n-val"):
        build_checked_datasets(TrainConfig.build(out=str(tmp_path / "a"), **{**TINY, "n_val": 1}))
    with pytest.raises(ValueError, match="holds no image of class 1"):
        train(TrainConfig.build(out=str(tmp_path / "b"), epochs=1, **{**TINY, "n_val": 1}))
    assert not (tmp_path / "b").exists()


def _torchrun(*args, out):
    """``args`` run by torch's launcher as two CPU processes; the finished process (asserted
    to have succeeded, its output shown when it did not)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=600)
    # the launcher's report fills the end of stderr: show the ranks' own first lines too
    files = sorted(os.listdir(out)) if os.path.isdir(out) else "none"
    assert proc.returncode == 0, (f"stdout: {proc.stdout[-2000:]}\nstderr (start): {proc.stderr[:3000]}\n"
                                  f"stderr (end): {proc.stderr[-3000:]}\nfiles in {out}: {files}")
    return proc


@pytest.mark.slow
def test_ddp_two_processes_end_with_identical_weights(tmp_path):
    out = str(tmp_path / "ddp")
    _torchrun("-m", "convex_attention.cli", "train", "--method", "learned_dual", "--image-size", "32", "--width", "4",
              "--n-train", "32", "--n-val", "8", "--epochs", "2", "--batch-size", "8", "--device", "cpu",
              "--out", out, "--no-progress", out=out)
    check = read_json(os.path.join(out, "ddp_check.json"))
    assert check["world_size"] == 2 and len(check["digests"]) == 2
    assert check["identical"] and check["digests"][0] == check["digests"][1]
    assert check["parameter_digests"][0] == check["parameter_digests"][1]
    rows = read(os.path.join(out, "metrics.csv"))
    assert len(rows) == 2  # rank 0 alone logs


_THREADS_AFTER_TRAINING = """
import gc, os, sys
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from convex_attention.paper.config import TrainConfig
from convex_attention.paper.train import train

destroy, wrappers_at_destroy = dist.destroy_process_group, []
def counting_destroy(*args, **kwargs):
    wrappers_at_destroy.append(sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects()))
    return destroy(*args, **kwargs)
dist.destroy_process_group = counting_destroy
train(TrainConfig.build(out=sys.argv[1], method="learned_dual", image_size=32, width=4, n_train=16, n_val=8,
                        epochs=1, batch_size=8, device="cpu", progress=False))
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
rank = os.environ["RANK"]
with open(os.path.join(sys.argv[2], "rank" + rank), "w") as out:  # the ranks' prints can interleave mid-line
    out.write(f"gloo threads: {sorted(n for n in names if 'gloo' in n)}\\n")
    out.write(f"DDP wrappers alive at destroy_process_group: {wrappers_at_destroy}\\n")
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="lists the process's threads through /proc")
def test_training_ends_with_no_gloo_thread_left_and_the_group_freed_by_its_owner(tmp_path):
    # torch 2.13 keeps the group alive past destroy_process_group when DDP's import of
    # torch._dynamo comes after init_process_group; its threads then outlive the run
    # into the interpreter's shutdown (train._init_process_group). And a group whose last
    # owner is DDP's reducer is destroyed with the GIL held, which can deadlock with a
    # Gloo worker (_Run.finish): no wrapper may be alive when the group is destroyed.
    script = tmp_path / "threads.py"
    script.write_text(_THREADS_AFTER_TRAINING)
    _torchrun(str(script), str(tmp_path / "run"), str(tmp_path), out=str(tmp_path / "run"))
    for r in (0, 1):
        assert (tmp_path / f"rank{r}").read_text().splitlines() == [
            "gloo threads: []", "DDP wrappers alive at destroy_process_group: [0]"], f"rank {r}"


_FAILING_RUN = """
import os, sys
import torch.distributed as dist
import convex_attention.paper.train as T
from convex_attention.paper.config import TrainConfig

def injected(*args, **kwargs):
    raise RuntimeError("injected failure")

if sys.argv[2] == "epoch":
    T._Run.epoch = injected
else:  # building the run fails after the group and the DDP wrapper exist
    T.labels_only = injected
try:
    T.train(TrainConfig.build(out=sys.argv[1], method="learned_dual", image_size=32, width=4, n_train=16, n_val=8,
                              epochs=1, batch_size=8, device="cpu", progress=False))
except RuntimeError as err:  # one file per rank: the two ranks' prints can interleave mid-line
    with open(os.path.join(sys.argv[3], "rank" + os.environ["RANK"]), "w") as out:
        out.write(f"{err}; group open: {dist.is_initialized()}")
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["epoch", "build"])
def test_a_failed_run_closes_its_process_group_and_raises(tmp_path, where):
    # before the fix the group stayed open after the error (both ranks printed "group open: True")
    script = tmp_path / "failing.py"
    script.write_text(_FAILING_RUN)
    _torchrun(str(script), str(tmp_path / "run"), where, str(tmp_path), out=str(tmp_path / "run"))
    said = [(tmp_path / f"rank{r}").read_text() for r in (0, 1)]
    assert said == ["injected failure; group open: False"] * 2


@pytest.mark.slow  # end to end or a boundary of a path lighter tests take (fast suite < 1 min)
def test_finish_frees_even_a_wrapper_held_by_a_cycle_before_the_group_is_destroyed(monkeypatch):
    # torch 2.13 frees DDP as soon as its last name goes; a wrapper that a reference cycle
    # holds must be gone too before destroy_process_group (see _Run.finish)
    import weakref

    import convex_attention.paper.train as train_module

    class CyclicWrapper(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model
            self.me = [self]  # a cycle: reference counting alone never frees it

    run = object.__new__(train_module._Run)
    run.world, run.main, run.model = 2, False, torch.nn.Linear(2, 2)
    run.net = CyclicWrapper(run.model)
    wrapper = weakref.ref(run.net)
    seen = []
    monkeypatch.setattr(train_module.dist, "all_gather_object", lambda out, mine: out.__setitem__(slice(None),
                                                                                                [mine, mine]))
    monkeypatch.setattr(train_module.dist, "barrier", lambda: None)
    monkeypatch.setattr(train_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(train_module.dist, "destroy_process_group", lambda: seen.append(wrapper() is None))
    run.finish()
    assert seen == [True] and run.net is run.model


def test_classification_metrics_auc_and_threshold_chosen_on_validation():
    # p(class 1) = 0.1, 0.4, 0.35, 0.8 for labels 0, 0, 1, 1: AUC 0.75; argmax misses the 0.35 positive
    p1 = torch.tensor([0.1, 0.4, 0.35, 0.8], dtype=torch.float64)
    logits = torch.stack([torch.zeros(4), torch.log(p1 / (1 - p1))], 1)
    target = torch.tensor([0, 0, 1, 1])
    m = classification_metrics(logits, target)
    assert m["val_auc"] == pytest.approx(0.75) and m["val_balanced_acc"] == pytest.approx(0.75)
    # the best threshold on this set: 0.8 (bal. acc 0.75) or 0.35 (0.75); Youden's J picks the first maximum
    assert m["val_threshold"] in (pytest.approx(0.8), pytest.approx(0.35))
    assert m["val_balanced_acc_at_threshold"] == pytest.approx(0.75)
    perfect = classification_metrics(torch.stack([torch.zeros(4), torch.tensor([-1.0, -0.5, -0.2, 2.0])], 1),
                                     torch.tensor([0, 0, 1, 1]))
    # argmax predicts only the last image as lesion; a threshold chosen on validation separates them all
    assert perfect["val_balanced_acc"] == 0.75 and perfect["val_balanced_acc_at_threshold"] == 1.0
    assert perfect["val_auc"] == 1.0 and 0 < perfect["val_threshold"] < 1
    one_class = classification_metrics(torch.randn(3, 2), torch.tensor([1, 1, 1]))
    assert one_class["val_auc"] != one_class["val_auc"]  # NaN: undefined with one class


def test_recomputed_batchnorm_statistics_are_those_of_the_final_weights():
    torch.manual_seed(0)
    model = AttentionUNet(method="exact", width=4, image_size=32, embed_channels=8)
    data = SyntheticLesions(8, 32, seed=3)
    images = torch.stack([data[i][0] for i in range(8)])
    with torch.no_grad():
        for m in model.modules():  # running averages far from the data's statistics
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.fill_(5.0)
                m.running_var.fill_(9.0)
        model.train()
        batch_stats = model(images).logits
        model.eval()
        stale = model(images).logits
    assert recompute_batchnorm(model, data, batch_size=8, device="cpu")
    model.eval()
    with torch.no_grad():
        fresh = model(images).logits
    # one batch holding every image: evaluation mode now reproduces the batch statistics
    # (up to the unbiased variance BatchNorm keeps: a factor n / (n - 1), n = 128 pixels at block 4)
    torch.testing.assert_close(fresh, batch_stats, atol=1e-2, rtol=1e-2)
    assert (stale - batch_stats).abs().max() > 10 * (fresh - batch_stats).abs().max()
    group = AttentionUNet(method="exact", width=4, image_size=32, embed_channels=8, norm="group")
    assert not recompute_batchnorm(group, data, batch_size=8, device="cpu")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in group.modules())


@pytest.mark.slow
def test_best_checkpoint_is_the_epoch_of_highest_validation_auc(tmp_path):
    out = str(tmp_path / "run")
    result = train(TrainConfig.build(out=out, method="softmax", epochs=3, lr=3e-3, **TINY))
    rows = read(os.path.join(out, "metrics.csv"))
    assert tuple(rows[0])[:9] == METRIC_COLUMNS[:9]  # old columns first, unchanged; new ones appended
    aucs = [float(r["val_auc"]) for r in rows]
    best = read_checkpoint(os.path.join(out, "best.pt"))
    assert best["epoch"] == result["best_epoch"] == 1 + aucs.index(max(aucs))
    assert best["train_config"]["model"]["method"] == "softmax" and 0 <= best["threshold"] <= 1
    for r in rows:
        assert 0 <= float(r["val_balanced_acc_at_threshold"]) <= 1 and 0 <= float(r["val_auc"]) <= 1
    assert read_json(os.path.join(out, "config.json"))["epochs"] == 3


# ----------------------------------------------------------------------------- divergence says what diverged

def _one_step(model, images):
    out = model(images)
    return out, model.loss(out, torch.zeros(len(images), dtype=torch.long))


def test_divergence_names_broken_data_without_learning_rate_advice():
    from convex_attention.paper.train import diagnose_divergence

    model = AttentionUNet(method="exact", image_size=32, width=4, embed_channels=8).eval()
    images = torch.randn(2, 4, 32, 32)
    images[1, 0, 3, 3] = float("nan")
    out, loss = _one_step(model, images)
    err = diagnose_divergence(model, images, out, loss, "at epoch 1, step 1", updated=True, lr=1e-3)
    assert "the training images hold NaN or Inf at epoch 1, step 1" in str(err) and "data are broken" in str(err)
    assert not err.lr_may_help and "learning rate" not in str(err)


def test_divergence_blames_the_learning_rate_only_after_an_update():
    from convex_attention.paper.train import diagnose_divergence

    model = AttentionUNet(method="exact", image_size=32, width=4, embed_channels=8).eval()
    images = torch.randn(2, 4, 32, 32)
    with torch.no_grad():  # finite weights whose logits overflow
        model.classifier.weight.fill_(3e38)
        model.classifier.bias.fill_(torch.finfo(torch.float32).max)
    out, loss = _one_step(model, images)
    before = diagnose_divergence(model, images, out, loss, "at epoch 1, step 1", updated=False, lr=1e-3)
    assert "the model's logits" in str(before) and "before any update" in str(before)
    assert not before.lr_may_help and "learning rate" not in str(before)
    after = diagnose_divergence(model, images, out, loss, "at epoch 2, step 3", updated=True, lr=1e-3)
    assert after.lr_may_help and "a smaller learning rate may help (lr 0.001)" in str(after)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    weights = diagnose_divergence(model, images, out, loss, "at epoch 2, step 3", updated=True, lr=1e-3)
    assert "the weights became NaN or Inf at epoch 2, step 3" in str(weights) and weights.lr_may_help


def test_training_on_images_with_nan_stops_saying_so(tmp_path):
    """Before: 'non-finite loss nan ...; lower --lr', whatever the cause."""
    from convex_attention.paper.train import TrainingDiverged

    train_set, val_set = SyntheticLesions(8, 32), SyntheticLesions(4, 32)

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return len(train_set)

        def __getitem__(self, i):
            image, label, mask = train_set[i]
            return image * float("nan"), label, mask

    with pytest.raises(TrainingDiverged, match="training images hold NaN or Inf at epoch 1, step 1") as err:
        train(TrainConfig.build(out=str(tmp_path / "a"), epochs=1, **{**TINY, "n_train": 8, "n_val": 4}),
              datasets=(Broken(), val_set))
    assert not err.value.lr_may_help


def test_evaluation_of_non_finite_outputs_reports_no_number():
    from convex_attention.paper.models import NonFiniteOutput
    from convex_attention.paper.train import evaluate

    model = AttentionUNet(method="exact", image_size=32, width=4, embed_channels=8)
    with torch.no_grad():
        model.classifier.weight.fill_(3e38)
        model.classifier.bias.fill_(torch.finfo(torch.float32).max)
    with pytest.raises(NonFiniteOutput, match="logits .* hold NaN or Inf"):
        evaluate(model, SyntheticLesions(4, 32))


def test_a_config_json_beside_an_old_checkpoint_is_read_as_strict_json(tmp_path):
    """NaN, Infinity, a byte-order mark or bytes that are not UTF-8 in config.json are
    refused with one line naming the file (config.json is written strict)."""
    from convex_attention.paper.train import stored_train_config

    flat = TrainConfig.build(**TINY).flat()
    for content, words in ((json.dumps({**flat, "lr": float("nan")}).encode(), "NaN is not a number"),
                           (b"\xef\xbb\xbf{}", "BOM"), (b"{\xff}", "utf-8")):
        (tmp_path / "config.json").write_bytes(content)
        with pytest.raises(ValueError, match=rf"config.json' beside the checkpoint is not readable JSON .*{words}"):
            stored_train_config(str(tmp_path / "old.pt"), {"config": flat})


RESUME = dict(image_size=32, width=4, n_train=64, n_val=32, batch_size=16, seed=3, progress=False, device="cpu")


@pytest.mark.slow  # end-to-end: several tiny training runs (2-4 s)
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    # the loader's shuffle, the augmentations and torch's generator go on where they stopped
    from convex_attention.paper.train import weights_digest

    full = train(TrainConfig.build(out=str(tmp_path / "full"), epochs=2, **RESUME))
    part = str(tmp_path / "part")
    train(TrainConfig.build(out=part, epochs=1, **RESUME))
    lines = []
    resumed = train(TrainConfig.build(out=part, epochs=2, resume=os.path.join(part, "last.pt"), **RESUME),
                    log=lines.append)
    assert weights_digest(resumed["model"]) == weights_digest(full["model"])
    assert resumed["metrics"][-1]["train_loss"] == full["metrics"][-1]["train_loss"]
    assert not any("seeded anew" in line for line in lines)


@pytest.mark.slow  # end-to-end: several tiny training runs (2-4 s)
def test_a_checkpoint_without_random_states_still_resumes_saying_the_order_differs(tmp_path):
    out = str(tmp_path / "run")
    train(TrainConfig.build(out=out, epochs=1, **RESUME))
    state = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    del state["rng"]  # as checkpoints saved before the random states were stored
    torch.save(state, os.path.join(out, "last.pt"))
    lines = []
    result = train(TrainConfig.build(out=out, epochs=2, resume=os.path.join(out, "last.pt"), **RESUME),
                   log=lines.append)
    assert [int(m["epoch"]) for m in result["metrics"]] == [1, 2]
    assert any("stores no random state" in line and "differ" in line for line in lines)


@pytest.mark.slow  # end-to-end: a training run (0.9 s)
def test_a_damaged_random_state_is_refused_before_any_work(tmp_path):
    from convex_attention.paper.train import check_resume

    out = str(tmp_path / "run")
    train(TrainConfig.build(out=out, epochs=1, **RESUME))
    state = read_checkpoint(os.path.join(out, "last.pt"))
    state["rng"]["aug"] = torch.zeros(3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="damaged random state"):
        check_resume(TrainConfig.build(out=out, epochs=2, resume=os.path.join(out, "last.pt"), **RESUME), state)


@pytest.mark.slow  # end-to-end: several tiny training runs (2-4 s)
def test_a_best_pt_left_by_an_interrupted_epoch_is_replaced_on_resume(tmp_path, monkeypatch):
    # killed after best.pt of epoch 2 was written, before last.pt of epoch 2: resume re-runs epoch 2
    import convex_attention.paper.train as T

    out = str(tmp_path / "run")
    original = T.save_checkpoint

    def killed(path, model, opt, epoch, *a, **k):
        if path.endswith("last.pt") and epoch == 2:
            raise KeyboardInterrupt
        return original(path, model, opt, epoch, *a, **k)

    monkeypatch.setattr(T, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig.build(out=out, epochs=2, **RESUME))
    monkeypatch.setattr(T, "save_checkpoint", original)
    assert read_checkpoint(os.path.join(out, "best.pt"))["epoch"] == 2
    assert read_checkpoint(os.path.join(out, "last.pt"))["epoch"] == 1
    lines = []
    run = T._Run(TrainConfig.build(out=out, epochs=3, resume=os.path.join(out, "last.pt"), **RESUME),
                 T.build_checked_datasets(TrainConfig.build(out=out, **RESUME)), None, lines.append)
    run.restore(read_checkpoint(os.path.join(out, "last.pt")))
    best = read_checkpoint(os.path.join(out, "best.pt"))
    assert best["epoch"] == run.best_epoch == 1
    assert any("interrupted between writing best.pt and last.pt" in line for line in lines)


@pytest.mark.slow  # end-to-end: a tiny training run of 3 epochs
def test_a_best_pt_left_by_an_interrupted_epoch_goes_when_no_checkpoint_of_the_best_epoch_is_left(tmp_path,
                                                                                                   monkeypatch):
    # epoch 1 the best, epoch 2 worse, epoch 3 better: best.pt of epoch 3 written, then killed
    # before last.pt of epoch 3.  Resumed from last.pt of epoch 2 (best epoch 1), epoch 3 is
    # trained again; no checkpoint of epoch 1 is left to carry in, so the stale best.pt goes
    import shutil

    import convex_attention.paper.train as T

    out, second = str(tmp_path / "run"), str(tmp_path / "epoch2.pt")
    original = T.save_checkpoint

    def keeping_epoch_2(path, model, opt, epoch, *a, **k):
        written = original(path, model, opt, epoch, *a, **k)
        if path.endswith("last.pt") and epoch == 2:
            shutil.copy(path, second)
        return written

    monkeypatch.setattr(T, "save_checkpoint", keeping_epoch_2)
    train(TrainConfig.build(out=out, epochs=3, **RESUME))
    monkeypatch.setattr(T, "save_checkpoint", original)
    shutil.copy(os.path.join(out, "last.pt"), os.path.join(out, "best.pt"))  # the run's own epoch 3
    state = read_checkpoint(second)
    state["best_epoch"] = 1  # as if epoch 1 had the highest validation AUC of epochs 1-2
    torch.save(state, os.path.join(out, "last.pt"))
    lines = []
    run = T._Run(TrainConfig.build(out=out, epochs=3, resume=os.path.join(out, "last.pt"), **RESUME),
                 T.build_checked_datasets(TrainConfig.build(out=out, **RESUME)), None, lines.append)
    run.restore(read_checkpoint(os.path.join(out, "last.pt")))
    assert run.best_epoch == 1
    assert not os.path.exists(os.path.join(out, "best.pt"))
    assert any("best.pt holds epoch 3, not the best epoch so far (1)" in line for line in lines)
    assert any("no checkpoint of the best epoch so far (1)" in line for line in lines)


@pytest.mark.slow  # end-to-end: several tiny training runs (2-4 s)
def test_a_best_pt_of_another_run_is_never_replaced_on_resume(tmp_path):
    import shutil

    import convex_attention.paper.train as T

    other, out = str(tmp_path / "other"), str(tmp_path / "run")
    train(TrainConfig.build(out=other, epochs=2, **{**RESUME, "seed": 4}))
    train(TrainConfig.build(out=out, epochs=1, **RESUME))
    shutil.copy(os.path.join(other, "last.pt"), os.path.join(out, "best.pt"))  # the user's file, of epoch 2
    with open(os.path.join(out, "best.pt"), "rb") as f:
        before = f.read()
    run = T._Run(TrainConfig.build(out=out, epochs=3, resume=os.path.join(out, "last.pt"), **RESUME),
                 T.build_checked_datasets(TrainConfig.build(out=out, **RESUME)), None, lambda *a: None)
    run.restore(read_checkpoint(os.path.join(out, "last.pt")))
    with open(os.path.join(out, "best.pt"), "rb") as f:
        assert f.read() == before


def test_auc_and_threshold_rank_logit_margins_that_softmax_rounds_to_one():
    # margins 38..45 all give p(class 1) == 1.0 in float64: ranked by probability they tie
    margins = torch.tensor([-1.0, 38.0, 40.0, 45.0, 39.0, 41.0, 44.0, 46.0], dtype=torch.float64)
    target = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert bool((torch.softmax(torch.stack([torch.zeros(8, dtype=torch.float64), margins], 1), 1)[1:, 1] == 1).all())
    m = classification_metrics(torch.stack([torch.zeros(8), margins.float()], 1), target)
    assert m["val_auc"] == pytest.approx(12 / 16)  # the ranking of the margins, not of tied probabilities
    assert m["val_balanced_acc_at_threshold"] == pytest.approx(0.75)
    assert m["val_threshold"] == 1.0  # on p(class 1), as stored before


_RESUME_WHILE_WAITING = """
import os, shutil, sys, time
from convex_attention.paper.config import TrainConfig
from convex_attention.paper.models import read_checkpoint
from convex_attention.paper.train import train

folder, newer, tiny = sys.argv[1], sys.argv[2], eval(sys.argv[3])
resume = os.path.join(folder, "last.pt")
if os.environ["RANK"] == "1":
    # on arrival: the run holding the folder is still at epoch 1, with its learning rate
    config = TrainConfig.build(out=folder, resume=resume, epochs=3, lr=1e-3, **tiny)
    state = read_checkpoint(resume)
else:
    time.sleep(3)  # rank 0 waits for the folder's lock (--wait); the holder goes on to epoch 2 and leaves
    for name in os.listdir(newer):
        shutil.copy2(os.path.join(newer, name), os.path.join(folder, name))
    # under the lock: the newer checkpoint, whose run was resumed with another learning rate
    config = TrainConfig.build(out=folder, resume=resume, epochs=3, lr=1e-5, **tiny)
    state = read_checkpoint(resume)
result = train(config, resume_state=state)
total = sum(float(p.double().sum()) for p in result["model"].parameters())
with open(os.path.join(sys.argv[4], "rank" + os.environ["RANK"]), "w") as out:
    out.write(repr(total))
"""


@pytest.mark.slow
def test_ranks_resume_from_the_checkpoint_rank_0_read_under_the_lock(tmp_path):
    """Under torchrun only rank 0 holds --out's lock; the other ranks read --resume on arrival.
    When the run holding the folder wrote a newer last.pt meanwhile, the ranks resumed
    different epochs and hung each other (a review: killed after 120 s); with the settings
    read on arrival (another learning rate) they trained different models (a second review)."""
    older, newer = tmp_path / "older", tmp_path / "newer"
    tiny = {**TINY, "n_train": 16, "n_val": 8}
    train(TrainConfig.build(out=str(older), epochs=1, **tiny))
    shutil.copytree(older, newer)
    train(TrainConfig.build(out=str(newer), resume=str(newer / "last.pt"), epochs=2, **tiny))
    folder = tmp_path / "run"
    shutil.copytree(older, folder)
    script = tmp_path / "resume.py"
    script.write_text(_RESUME_WHILE_WAITING)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           str(folder), str(newer), repr(tiny), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [int(r["epoch"]) for r in read(str(folder / "metrics.csv"))] == [1, 2, 3]  # epoch 3 once, after 2
    # every rank took rank 0's settings: one model (with rank 1's own learning rate the ranks drifted apart)
    assert (tmp_path / "rank0").read_text() == (tmp_path / "rank1").read_text()


_DATA_FAILS_ON_RESUME = """
import os, sys
import torch.distributed as dist
import convex_attention.paper.train as T
from convex_attention.paper.config import TrainConfig

def injected(*args, **kwargs):
    raise RuntimeError("injected data failure")

T.build_checked_datasets = injected  # after the ranks agreed on the resume, before the run exists
folder, tiny = sys.argv[1], eval(sys.argv[2])
try:
    T.train(TrainConfig.build(out=folder, resume=os.path.join(folder, "last.pt"), epochs=2, **tiny))
except RuntimeError as err:  # one file per rank: the two ranks' prints can interleave mid-line
    with open(os.path.join(sys.argv[3], "rank" + os.environ["RANK"]), "w") as out:
        out.write(f"{err}; group open: {dist.is_initialized()}")
"""


@pytest.mark.slow
def test_a_resume_whose_data_fail_after_the_ranks_agreed_closes_its_process_group(tmp_path):
    """The ranks' agreement on the resume starts the process group before the data are built;
    a data error there left it open (a review)."""
    tiny = {**TINY, "n_train": 16, "n_val": 8}
    folder = tmp_path / "run"
    train(TrainConfig.build(out=str(folder), epochs=1, **tiny))
    script = tmp_path / "data_fails.py"
    script.write_text(_DATA_FAILS_ON_RESUME)
    _torchrun(str(script), str(folder), repr(tiny), str(tmp_path), out=str(folder))
    said = [(tmp_path / f"rank{r}").read_text() for r in (0, 1)]
    assert said == ["injected data failure; group open: False"] * 2


# ----------------------------------------------------------------------------- selection, resume and checkpoints

FAST = dict(image_size=32, width=4, embed_channels=8, n_train=16, n_val=8, batch_size=8, seed=3, progress=False,
            device="cpu")


def _scripted_aucs(monkeypatch, aucs):
    """Validation replaced by one that reports the validation AUCs ``aucs``, epoch after epoch:
    the selection's input chosen by the test, not by a model's luck."""
    import convex_attention.paper.train as T

    aucs = iter(aucs)

    def scripted(model, dataset, batch_size=64, device="cpu"):
        return {"val_loss": 0.5, "val_acc": 0.5, "val_balanced_acc": 0.5, "val_auc": next(aucs),
                "val_threshold": 0.25, "val_balanced_acc_at_threshold": 0.5, "val_violation": 0.0}

    monkeypatch.setattr(T, "evaluate", scripted)


@pytest.mark.slow  # end-to-end: tiny training runs, resumed (0.4-1.5 s)
def test_best_pt_is_the_first_epoch_of_the_highest_auc_and_every_checkpoint_names_it(tmp_path, monkeypatch):
    _scripted_aucs(monkeypatch, [0.6, 0.8, 0.8, 0.7])  # epochs 2 and 3 tie: the first one stays best
    out = str(tmp_path / "run")
    result = train(TrainConfig.build(out=out, epochs=4, lr=2e-3, **FAST))
    best, last = read_checkpoint(os.path.join(out, "best.pt")), read_checkpoint(os.path.join(out, "last.pt"))
    assert result["best_epoch"] == best["epoch"] == best["best_epoch"] == 2
    assert last["epoch"] == 4 and last["best_epoch"] == 2
    assert result["best"] == os.path.join(out, "best.pt") and result["last"] == os.path.join(out, "last.pt")
    assert best["train_config"]["lr"] == 2e-3 and best["threshold"] == 0.25
    rows = read(os.path.join(out, "metrics.csv"))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["val_auc"]) for r in rows] == [0.6, 0.8, 0.8, 0.7]
    assert all(float(r["lr"]) == 2e-3 for r in rows)  # the learning rate of the epoch


@pytest.mark.slow  # end-to-end: tiny training runs, resumed (0.4-1.5 s)
@pytest.mark.parametrize("stored", [True, False], ids=["best_epoch", "older-checkpoint"])
def test_a_resumed_run_keeps_the_best_epoch_of_the_run_it_continues(tmp_path, monkeypatch, stored):
    # epoch 1 and 2 tie at 0.8; the resumed epochs do worse: epoch 1 stays best, with or
    # without the best epoch stored in last.pt (then found again from its metrics)
    _scripted_aucs(monkeypatch, [0.8, 0.8, 0.7, 0.75])
    out = str(tmp_path / "run")
    train(TrainConfig.build(out=out, epochs=2, **FAST))
    last = os.path.join(out, "last.pt")
    if not stored:
        state = torch.load(last, weights_only=True)
        del state["best_epoch"]  # as checkpoints saved before the best epoch was stored
        torch.save(state, last)
    result = train(TrainConfig.build(out=out, epochs=4, resume=last, **FAST))
    assert [int(m["epoch"]) for m in result["metrics"]] == [1, 2, 3, 4]
    assert result["best_epoch"] == read_checkpoint(os.path.join(out, "best.pt"))["epoch"] == 1
    assert read_checkpoint(last)["best_epoch"] == 1


@pytest.mark.slow  # end-to-end: tiny training runs, resumed (0.4-1.5 s)
def test_resume_into_another_folder_brings_the_best_checkpoint_beside_the_one_resumed(tmp_path, monkeypatch):
    import convex_attention.paper.train as T

    _scripted_aucs(monkeypatch, [0.9, 0.5])
    first = str(tmp_path / "first")
    train(TrainConfig.build(out=first, epochs=2, **FAST))
    config = TrainConfig.build(out=str(tmp_path / "second"), epochs=3, resume=os.path.join(first, "last.pt"),
                               **FAST)
    run = T._Run(config, T.build_checked_datasets(config), None, lambda *a: None)
    run.restore(read_checkpoint(config.resume))
    with open(os.path.join(first, "best.pt"), "rb") as f, open(os.path.join(config.out, "best.pt"), "rb") as g:
        assert g.read() == f.read()  # epoch 1's checkpoint, not last.pt's epoch 2
    assert run.best_epoch == 1


@pytest.mark.slow  # end-to-end: tiny training runs, resumed (0.4-1.5 s)
def test_resume_trains_with_the_learning_rate_and_weight_decay_asked_now(tmp_path):
    out = str(tmp_path / "run")
    train(TrainConfig.build(out=out, epochs=1, lr=1e-3, weight_decay=1e-3, augment=False, **FAST))
    groups = read_checkpoint(os.path.join(out, "last.pt"))["optimizer"]["param_groups"]
    assert all(g["lr"] == 1e-3 and g["weight_decay"] == 1e-3 for g in groups)
    train(TrainConfig.build(out=out, epochs=2, lr=5e-4, weight_decay=2e-4, augment=False,
                            resume=os.path.join(out, "last.pt"), **FAST))
    last = read_checkpoint(os.path.join(out, "last.pt"))
    assert last["epoch"] == 2
    assert all(g["lr"] == 5e-4 and g["weight_decay"] == 2e-4 for g in last["optimizer"]["param_groups"])


def _diverging_at(call):
    """A model whose training loss becomes infinite at its ``call``-th training step."""
    class Diverging(AttentionUNet):
        calls = 0

        def loss(self, out, labels):
            loss = super().loss(out, labels)
            if torch.is_grad_enabled():
                type(self).calls += 1
                if type(self).calls == call:
                    return loss * float("inf")
            return loss

    return Diverging


@pytest.mark.slow  # end-to-end: tiny training runs, resumed (0.4-1.5 s)
def test_the_learning_rate_is_blamed_only_after_an_update_here_or_before_the_resumed_checkpoint(tmp_path):
    from convex_attention.paper.train import TrainingDiverged

    config = TrainConfig.build(out=str(tmp_path / "a"), epochs=1, **FAST)
    with pytest.raises(TrainingDiverged, match="at epoch 1, step 1") as first:
        train(config, model_class=_diverging_at(1))
    assert not first.value.lr_may_help  # no update yet
    with pytest.raises(TrainingDiverged, match="at epoch 1, step 2") as second:
        train(config, model_class=_diverging_at(2))
    assert second.value.lr_may_help
    out = str(tmp_path / "b")
    train(TrainConfig.build(out=out, epochs=1, **FAST))
    with pytest.raises(TrainingDiverged, match="at epoch 2, step 1") as resumed:
        train(TrainConfig.build(out=out, epochs=2, resume=os.path.join(out, "last.pt"), **FAST),
              model_class=_diverging_at(1))
    assert resumed.value.lr_may_help  # the checkpoint's epoch took updates


@pytest.mark.slow  # trains a model per case (~0.5 s)
@pytest.mark.parametrize("progress", [True, False])
def test_progress_shows_bars_and_epoch_lines_and_no_progress_is_silent(tmp_path, capsys, progress):
    train(TrainConfig.build(out=str(tmp_path / "run"), epochs=1, **{**FAST, "progress": progress}))
    out, err = capsys.readouterr()
    if progress:
        assert "epoch 1/1" in err and "] epoch 1: loss" in out
        # the line names each number: the balanced accuracy at the threshold had read as the threshold (ca_rev272)
        row = read(str(tmp_path / "run" / "metrics.csv"))[0]
        assert (f"bal.acc {float(row['val_balanced_acc']):.3f} argmax, "
                f"{float(row['val_balanced_acc_at_threshold']):.3f} at threshold "
                f"{float(row['val_threshold']):.3f} ") in out
    else:
        assert out == "" and err == ""


def _recording(seen):
    """A model that appends every image it trains on (with gradients: not BatchNorm's pass)."""
    class Recording(AttentionUNet):
        def forward(self, images):
            if torch.is_grad_enabled():
                seen.append(images.detach().clone())
            return super().forward(images)

    return Recording


@pytest.mark.slow  # trains a model per case (~0.6 s)
@pytest.mark.parametrize("augment_", [False, True])
def test_training_sees_the_images_as_given_without_augmentation_and_shuffled_each_epoch(tmp_path, augment_):
    train_set, val_set = SyntheticLesions(16, 32, seed=5), SyntheticLesions(8, 32, seed=6)
    seen = []
    train(TrainConfig.build(out=str(tmp_path / "run"), epochs=2, augment=augment_, **FAST),
          datasets=(train_set, val_set), model_class=_recording(seen))
    given = torch.stack([train_set[i][0] for i in range(16)])
    trained = torch.cat(seen)
    assert trained.shape == (32, 4, 32, 32)  # 2 epochs of 2 batches of 8

    def order(images):  # which of the given images each one is (-1: none of them)
        return [next((i for i in range(16) if torch.equal(x, given[i])), -1) for x in images]

    if augment_:
        assert order(trained) == [-1] * 32
    else:
        first, second = order(trained[:16]), order(trained[16:])
        assert sorted(first) == sorted(second) == list(range(16))
        assert first != list(range(16)) and first != second  # shuffled, anew each epoch


@pytest.mark.parametrize("recompute_bn", [True, False])
def test_batchnorm_statistics_after_each_epoch_are_recomputed_only_when_asked(tmp_path, recompute_bn):
    import copy

    train_set, val_set = SyntheticLesions(16, 32, seed=5), SyntheticLesions(8, 32, seed=6)
    model = train(TrainConfig.build(out=str(tmp_path / "run"), epochs=1, recompute_bn=recompute_bn, **FAST),
                  datasets=(train_set, val_set))["model"]
    fresh = copy.deepcopy(model)
    assert recompute_batchnorm(fresh, train_set, batch_size=8, device="cpu")
    stats = [(a, b) for (name, a), b in zip(model.named_buffers(), fresh.buffers()) if "running" in name]
    assert stats
    same = all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in stats)
    assert same == recompute_bn  # otherwise the running averages of training mode


@pytest.mark.slow  # trains a model (~0.3 s)
def test_train_loss_and_accuracy_are_the_epochs_means_over_its_images(tmp_path):
    steps = []

    class Recording(AttentionUNet):
        def loss(self, out, labels):
            loss = super().loss(out, labels)
            if torch.is_grad_enabled():
                steps.append((float(loss.detach()), int((out.logits.argmax(1) == labels).sum()), len(labels)))
            return loss

    result = train(TrainConfig.build(out=str(tmp_path / "run"), epochs=1, **{**FAST, "n_train": 24}),
                   model_class=Recording)
    row = result["metrics"][0]
    n = sum(s[2] for s in steps)
    assert len(steps) == 3 and n == 24
    assert row["train_loss"] == pytest.approx(sum(loss * k for loss, _, k in steps) / n)
    assert row["train_acc"] == pytest.approx(sum(c for _, c, _ in steps) / n)


@pytest.mark.slow  # end-to-end: tiny training runs, resumed (0.4-1.5 s)
def test_runs_of_one_seed_start_from_the_same_weights_and_other_seeds_do_not(tmp_path):
    from convex_attention.paper.train import weights_digest

    def weights(seed, name):
        return weights_digest(train(TrainConfig.build(out=str(tmp_path / name), epochs=1, **{**FAST, "seed": seed}))[
            "model"])

    assert weights(7, "a") == weights(7, "b") != weights(8, "c")


def test_weights_digest_tells_models_apart_by_their_buffers_too():
    from convex_attention.paper.train import weights_digest

    a = AttentionUNet(method="exact", image_size=32, width=4, embed_channels=8)
    b = AttentionUNet(method="exact", image_size=32, width=4, embed_channels=8)
    b.load_state_dict(a.state_dict())
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        next(m for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean.add_(1.0)
    assert weights_digest(a) != weights_digest(b)  # another model in evaluation mode
    assert weights_digest(a, buffers=False) == weights_digest(b, buffers=False)


def test_an_older_checkpoint_takes_its_settings_from_config_json_and_its_model_from_itself(tmp_path):
    from convex_attention.paper.train import stored_train_config

    assert stored_train_config(str(tmp_path / "old.pt"), {"config": {}}) is None  # no config.json: nothing
    ran = TrainConfig.build(out=str(tmp_path), epochs=5, lr=2e-3, **FAST)
    (tmp_path / "config.json").write_text(json.dumps({**ran.flat(), "width": 8}))  # a config.json edited since
    config = stored_train_config(str(tmp_path / "old.pt"), {"config": ran.model.to_dict()})
    assert config.epochs == 5 and config.lr == 2e-3
    assert config.model == ran.model  # width 4, as the weights


def test_resume_never_unpickles_the_checkpoint(tmp_path):
    import pickle

    marker = tmp_path / "PWNED"

    class Planted:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "last.pt"
    path.write_bytes(pickle.dumps({"format": 1, "config": Planted(), "epoch": 1}))
    with pytest.raises(ValueError, match="not a convex-attention checkpoint"):
        train(TrainConfig.build(out=str(tmp_path / "run"), epochs=2, resume=str(path), **FAST))
    assert not marker.exists()


@pytest.mark.slow  # end-to-end: tiny training runs, resumed (0.4-1.5 s)
def test_a_checkpoint_of_another_number_of_processes_resumes_saying_the_order_differs(tmp_path):
    out = str(tmp_path / "run")
    train(TrainConfig.build(out=out, epochs=1, **FAST))
    state = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    state["rng"]["world"] = 2  # as saved under torchrun with two processes
    torch.save(state, os.path.join(out, "last.pt"))
    lines = []
    train(TrainConfig.build(out=out, epochs=2, resume=os.path.join(out, "last.pt"), **FAST), log=lines.append)
    assert any("another number of processes" in line and "differ" in line for line in lines)


def test_validation_loss_and_accuracy_are_means_over_the_images_whatever_the_batches():
    from convex_attention.paper.train import evaluate

    model = AttentionUNet(method="softmax", image_size=32, width=4, embed_channels=8).eval()
    data = SyntheticLesions(7, 32, seed=2)
    images, labels = torch.stack([data[i][0] for i in range(7)]), torch.tensor([int(data[i][1]) for i in range(7)])
    with torch.no_grad():
        logits = model(images).logits
    expected = float(torch.nn.functional.cross_entropy(logits.double(), labels))  # softmax: no auxiliary loss
    for batch_size in (3, 64):  # batches of 3, 3 and 1; one batch
        m = evaluate(model, data, batch_size=batch_size)
        assert m["val_loss"] == pytest.approx(expected, rel=1e-5)
        assert m["val_acc"] == pytest.approx(float((logits.argmax(1) == labels).double().mean()))


def test_the_threshold_is_one_of_the_validation_scores_even_when_none_separates():
    # every lesion scores below every healthy image: no threshold beats predicting one class,
    # and the one reported is still a p(class 1) of these images (never above all of them)
    margins = torch.tensor([2.0, 3.0, -1.0, 0.5], dtype=torch.float64)
    m = classification_metrics(torch.stack([torch.zeros(4, dtype=torch.float64), margins], 1),
                               torch.tensor([0, 0, 1, 1]))
    assert m["val_auc"] == 0.0 and m["val_balanced_acc_at_threshold"] == 0.5
    assert m["val_threshold"] in [pytest.approx(float(p)) for p in torch.sigmoid(margins)]


@pytest.mark.parametrize("field,value", [("method", "softmax"), ("width", 8)])
def test_resume_refuses_a_checkpoint_of_another_architecture_before_any_work(tmp_path, field, value):
    from helpers import tiny_checkpoint

    path = tiny_checkpoint(tmp_path / "ckpt" / "last.pt", epoch=1, epochs=1, method="exact", width=4)
    out = str(tmp_path / "run")
    config = TrainConfig.build(out=out, epochs=2, resume=path, **{**FAST, "method": "exact", field: value})
    with pytest.raises(ValueError, match=rf"another architecture \({field}: checkpoint"):
        train(config)
    assert not os.path.exists(out)


# ----------------------------------------------------------------------------- mutation-testing additions

def test_a_checkpoint_that_stores_its_training_configuration_resumes_with_that_one(tmp_path):
    from convex_attention.paper.train import stored_train_config

    ran = TrainConfig.build(out=str(tmp_path), epochs=5, lr=2e-3, **FAST)
    state = {"train_config": ran.to_dict(), "config": ran.model.to_dict()}
    assert stored_train_config(str(tmp_path / "last.pt"), state) == ran  # no config.json needed
    (tmp_path / "config.json").write_text(json.dumps({**ran.flat(), "lr": 1e-4}))  # a config.json edited since
    assert stored_train_config(str(tmp_path / "last.pt"), state) == ran


def _mann_whitney_auc(scores, positive):
    """The probability that a positive scores above a negative (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    return float(((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean())


def test_more_classes_report_the_one_vs_rest_macro_auc_and_no_threshold():
    logits = torch.randn(12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0, 1, 0] * 2)  # unequal classes: one-vs-one would average otherwise
    m = classification_metrics(logits, target)
    probs = torch.softmax(logits, 1)
    assert m["val_auc"] == pytest.approx(sum(_mann_whitney_auc(probs[:, c], target == c) for c in range(3)) / 3)
    assert math.isnan(m["val_threshold"]) and math.isnan(m["val_balanced_acc_at_threshold"])
    missing = classification_metrics(logits[target != 2], target[target != 2])  # class 2 absent: undefined
    assert math.isnan(missing["val_auc"]) and math.isnan(missing["val_balanced_acc"])


def test_the_plain_cnn_s_attention_violation_is_nan_not_a_perfect_zero():
    from convex_attention.paper.models import PlainCNN
    from convex_attention.paper.train import evaluate

    m = evaluate(PlainCNN(image_size=32, width=4), SyntheticLesions(4, 32, seed=2))
    assert math.isnan(m["val_violation"]) and math.isfinite(m["val_loss"])


def test_learning_rate_advice_only_where_it_may_help_and_the_rate_is_known():
    from convex_attention.paper.train import TrainingDiverged

    assert "smaller learning rate may help (lr 0.001)" in str(TrainingDiverged("the weights became NaN", True, 1e-3))
    assert "learning rate" not in str(TrainingDiverged("the weights became NaN", False, 1e-3))
    assert "learning rate" not in str(TrainingDiverged("the weights became NaN", True, None))


@pytest.mark.parametrize("n_bad", [3, 4])
def test_divergence_names_at_most_three_weights_and_says_when_there_are_more(n_bad):
    from convex_attention.paper.train import diagnose_divergence

    model = AttentionUNet(method="exact", image_size=32, width=4, embed_channels=8).eval()
    images = torch.randn(2, 4, 32, 32)
    out, loss = _one_step(model, images)
    names = [n for n, _ in model.named_parameters()][:n_bad]
    with torch.no_grad():
        for _, p in list(model.named_parameters())[:n_bad]:
            p.view(-1)[0] = float("nan")
    err = str(diagnose_divergence(model, images, out, loss, "at epoch 1, step 2", updated=True, lr=1e-3))
    assert all(name in err for name in names[:3]) and not any(name in err for name in names[3:])
    assert ("and more" in err) == (n_bad > 3)


@pytest.mark.parametrize("updated", [True, False])
def test_divergence_names_a_non_finite_consistency_loss_with_finite_logits_and_maps(updated):
    from convex_attention.paper.train import diagnose_divergence

    model = AttentionUNet(method="exact", image_size=32, width=4, embed_channels=8).eval()
    images = torch.randn(2, 4, 32, 32)
    out, _ = _one_step(model, images)
    out.aux_loss = torch.tensor(float("nan"))
    err = diagnose_divergence(model, images, out, out.aux_loss, "at epoch 1, step 2", updated=updated, lr=1e-3)
    assert "the consistency loss (alpha x the KL terms) is nan at epoch 1, step 2" in str(err)
    assert err.lr_may_help == updated


class _Labelled(torch.utils.data.Dataset):
    """A dataset known only by its labels (check_validation_classes reads ``labels``)."""

    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)


@pytest.mark.parametrize("data,fix", [("synthetic", "raise --n-val or change --data-seed"),
                                      ("folder", "add images of every class to the validation data (root/val)"),
                                      ("brats", "add images of every class to the validation data (or raise "
                                                "--val-fraction)")])
def test_a_validation_set_without_a_class_is_refused_naming_the_class_the_counts_and_the_fix(data, fix):
    from convex_attention.paper.train import ValidationClassesError, check_validation_classes

    config = TrainConfig.build(data=data, num_classes=3, **FAST)
    with pytest.raises(ValidationClassesError) as err:
        check_validation_classes(config, _Labelled([0, 1, 0]))
    assert str(err.value).startswith("the validation set (3 images) holds no image of class 2 (per class: 2, 1, 0)")
    assert str(err.value).endswith(fix)
    with pytest.raises(ValidationClassesError, match=r"\(2 images\) holds no image of class 1, 2 "):
        check_validation_classes(config, _Labelled([0, 0]))
    check_validation_classes(config, _Labelled([2, 1, 0]))  # every class: accepted


def test_an_empty_validation_set_and_images_of_another_size_are_refused():
    from convex_attention.paper.train import check_data

    config = TrainConfig.build(**FAST)
    train_set = SyntheticLesions(4, 32)
    with pytest.raises(ValueError, match="empty dataset: 4 training and 0 validation images"):
        check_data(config, train_set, torch.utils.data.Subset(train_set, []))
    wide = torch.utils.data.TensorDataset(torch.zeros(2, 4, 32, 16), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="images are 32x16 but the model is built for 32x32"):
        check_data(config, wide, wide)


def _resume_state(config, epoch=1, **parts):
    """A checkpoint's content as check_resume reads it: the model's settings, the epoch, ``parts``."""
    return {"config": config.model.to_dict(), "epoch": epoch, **parts}


def test_resume_starts_after_the_checkpoint_s_epoch_and_refuses_one_with_nothing_left():
    from convex_attention.paper.train import check_resume

    assert check_resume(TrainConfig.build(epochs=3, resume="last.pt", **FAST),
                        _resume_state(TrainConfig.build(**FAST), epoch=2)) == 3
    with pytest.raises(ValueError, match="is at epoch 2 and the run asks for 2 epochs: nothing to do"):
        check_resume(TrainConfig.build(epochs=2, resume="last.pt", **FAST),
                     _resume_state(TrainConfig.build(**FAST), epoch=2))


def test_resume_refuses_a_non_finite_optimiser_state_naming_three_entries_and_how_many_more():
    from convex_attention.paper.train import check_resume

    config = TrainConfig.build(epochs=3, resume="last.pt", **FAST)
    nan = torch.tensor([float("nan")])
    state = {k: {"step": torch.tensor(1.0), "exp_avg": nan, "exp_avg_sq": torch.ones(1)} for k in range(5)}
    with pytest.raises(ValueError, match=r"not all finite \(parameter 0 exp_avg, parameter 1 exp_avg, parameter 2 "
                                         r"exp_avg and 2 more\)"):
        check_resume(config, _resume_state(config, optimizer={"state": state, "param_groups": []}))
    state = {0: {"step": torch.tensor(1.0), "exp_avg": torch.tensor([float("inf")])}}
    with pytest.raises(ValueError, match=r"not all finite \(parameter 0 exp_avg\): the next updates would not be"):
        check_resume(config, _resume_state(config, optimizer={"state": state, "param_groups": []}))


@pytest.mark.parametrize("damage,words", [
    ({"world": "1"}, "not a dict with the number of processes"),
    ({"loader": torch.zeros(3, dtype=torch.uint8)}, "'loader' is not the state of a CPU random generator"),
    ({"cuda": [torch.zeros(3)]}, "'cuda' is not a list of generator states"),
    ({"cuda": torch.get_rng_state()}, "'cuda' is not a list of generator states")])
def test_resume_refuses_damaged_random_states_naming_the_damage(damage, words):
    from convex_attention.paper.train import check_resume

    config = TrainConfig.build(epochs=3, resume="last.pt", **FAST)
    good = {"world": 1, "torch": torch.get_rng_state(), "aug": torch.Generator().get_state(),
            "loader": torch.Generator().get_state()}
    assert check_resume(config, _resume_state(config, rng=good)) == 2
    with pytest.raises(ValueError, match=f"damaged random state \\({words}\\)"):
        check_resume(config, _resume_state(config, rng={**good, **damage}))


def test_ddp_check_json_says_whether_every_rank_ended_with_the_same_weights(tmp_path, monkeypatch):
    import convex_attention.paper.train as train_module
    from convex_attention.paper.train import weights_digest

    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    for other, identical in ((a, True), (b, False)):
        run = object.__new__(train_module._Run)
        run.world, run.main, run.model, run.net = 2, True, a, a
        run.config = TrainConfig.build(out=str(tmp_path), **FAST)
        mine = (weights_digest(a), weights_digest(a, buffers=False))
        theirs = (weights_digest(other), weights_digest(other, buffers=False))
        monkeypatch.setattr(train_module.dist, "all_gather_object",
                            lambda out, _, theirs=theirs, mine=mine: out.__setitem__(slice(None), [mine, theirs]))
        monkeypatch.setattr(train_module.dist, "barrier", lambda: None)
        monkeypatch.setattr(train_module.dist, "is_initialized", lambda: False)
        run.finish()
        check = read_json(tmp_path / "ddp_check.json")
        assert check["identical"] is identical and check["world_size"] == 2
        assert check["digests"] == [mine[0], theirs[0]] and check["parameter_digests"] == [mine[1], theirs[1]]


def test_the_process_group_is_nccl_on_cuda_and_gloo_on_cpu(monkeypatch):
    import convex_attention.paper.train as train_module

    monkeypatch.setattr(train_module.torch.cuda, "is_available", lambda: True)
    assert train_module._backend(TrainConfig.build(**{**FAST, "device": "auto"})) == "nccl"
    assert train_module._backend(TrainConfig.build(**FAST)) == "gloo"  # device cpu
    monkeypatch.setattr(train_module.torch.cuda, "is_available", lambda: False)
    assert train_module._backend(TrainConfig.build(**{**FAST, "device": "auto"})) == "gloo"


def test_augment_flips_images_both_ways():
    x = torch.randn(1, 1, 8, 8).expand(64, 1, 8, 8).contiguous()
    a = augment(x, torch.Generator().manual_seed(0), max_rotation_deg=0.0, max_shift=0.0, max_zoom=0.0)
    views = {"as given": x[0], "x": x[0].flip(-1), "y": x[0].flip(-2), "xy": x[0].flip(-1).flip(-2)}
    seen = [next((k for k, v in views.items() if torch.allclose(image, v, atol=1e-5)), None) for image in a]
    assert set(seen) == set(views)  # every image one of the four flips, and each flip drawn


@pytest.mark.slow  # end-to-end: tiny training runs, resumed (0.4-1.5 s)
def test_an_epoch_of_undefined_auc_is_best_only_until_an_epoch_has_one_also_after_resume(tmp_path, monkeypatch):
    # epoch 1's AUC is NaN (kept as best.pt: the only checkpoint so far), epoch 2's 0.7 is
    # the first defined one and becomes best; resumed without the best epoch stored, the
    # selection is found again from the finite AUCs, never from the NaN
    _scripted_aucs(monkeypatch, [float("nan"), 0.7, 0.6])
    out = str(tmp_path / "run")
    last = os.path.join(out, "last.pt")
    assert train(TrainConfig.build(out=out, epochs=2, **FAST))["best_epoch"] == 2
    assert read_checkpoint(os.path.join(out, "best.pt"))["epoch"] == read_checkpoint(last)["best_epoch"] == 2
    state = torch.load(last, weights_only=True)
    del state["best_epoch"]  # as checkpoints saved before the best epoch was stored
    torch.save(state, last)
    result = train(TrainConfig.build(out=out, epochs=3, resume=last, **FAST))
    assert result["best_epoch"] == read_checkpoint(os.path.join(out, "best.pt"))["epoch"] == 2


@pytest.mark.slow  # end-to-end: tiny training runs (0.2-0.5 s)
def test_the_augmentations_are_drawn_from_the_run_s_seed(tmp_path):
    train_set, val_set = SyntheticLesions(1, 32, seed=5), SyntheticLesions(8, 32, seed=6)

    def augmented(seed, name):  # one image, one step: no shuffle, only the augmentation differs
        seen = []
        train(TrainConfig.build(out=str(tmp_path / name), epochs=1, **{**FAST, "seed": seed}),
              datasets=(train_set, val_set), model_class=_recording(seen))
        assert len(seen) == 1 and not torch.equal(seen[0][0], train_set[0][0])
        return seen[0]

    first = augmented(7, "a")
    assert torch.equal(first, augmented(7, "b")) and not torch.equal(first, augmented(8, "c"))


@pytest.mark.slow  # end-to-end: a tiny training run (0.5 s)
@pytest.mark.parametrize("theirs", ["bytes", "no-history"])
def test_a_best_pt_that_is_no_checkpoint_of_this_run_is_left_alone_on_resume(tmp_path, theirs):
    # not a checkpoint at all, or a checkpoint without a history of epochs (nothing shows
    # it is of this run): the user's file, never replaced nor removed
    from helpers import tiny_checkpoint

    import convex_attention.paper.train as T

    out = str(tmp_path / "run")
    train(TrainConfig.build(out=out, epochs=1, **FAST))
    best = os.path.join(out, "best.pt")
    if theirs == "bytes":
        with open(best, "wb") as f:
            f.write(b"not a checkpoint")
    else:
        tiny_checkpoint(best, epoch=2, epochs=2, **FAST)
    with open(best, "rb") as f:
        before = f.read()
    config = TrainConfig.build(out=out, epochs=3, resume=os.path.join(out, "last.pt"), **FAST)
    run = T._Run(config, T.build_checked_datasets(config), None, lambda *a: None)
    run.restore(read_checkpoint(config.resume))
    with open(best, "rb") as f:
        assert f.read() == before


def _ca_rev74_resume(tmp_path, **changes):
    from dataclasses import replace

    from helpers import tiny_checkpoint

    from convex_attention.paper.train import check_resume, stored_train_config

    path = tiny_checkpoint(tmp_path / "x" / "last.pt", epoch=1, epochs=2)
    state = read_checkpoint(path)
    config = replace(stored_train_config(path, state), resume=path)
    model = {k: changes.pop(k) for k in list(changes) if hasattr(config.model, k)}
    config = replace(config, model=replace(config.model, **model), **changes)
    return check_resume(config, state), config


def test_ca_rev74_resume_takes_the_same_temperature_written_per_level(tmp_path):
    """(1.0,) and (1.0, 1.0) are one temperature for a two-level model (temperature_per_level):
    `train --resume CKPT --temperature 1 1` computes exactly what the checkpoint did, yet is refused."""
    from convex_attention.paper.config import TrainConfig

    levels = len(TrainConfig.build(image_size=32, width=4).model.temperature_per_level())
    assert levels > 1
    assert _ca_rev74_resume(tmp_path, temperature=(1.0,) * levels)[0] == 2


def test_ca_rev74_library_resume_refuses_another_seed(tmp_path):
    """e160476 refuses `--seed` on `train --resume` in the CLI only: train(config) with
    config.resume and another seed still records the new seed, used nowhere."""
    with pytest.raises(ValueError, match="seed"):
        _ca_rev74_resume(tmp_path, seed=12345)


# ---- ca_rev130 (strict xfail: review of 9ef579d)


def test_ca_rev130_a_config_json_nested_too_deep_beside_a_checkpoint_is_refused_as_unreadable(tmp_path):
    """A checkpoint without train_config (save_checkpoint(path, model), as an older run wrote it)
    beside a config.json holding '[' * 100000 + ']' * 100000.  Expected: ValueError naming
    config.json ('beside the checkpoint is not readable JSON'), which `train --resume` and
    `explain` report in one line, exit 2, as they do for NaN in that file.  Observed: `train
    --resume w/ck/a.pt --epochs 1` printed a RecursionError traceback, exit 1."""
    from convex_attention.paper.train import stored_train_config

    (tmp_path / "config.json").write_text("[" * 10000 + "]" * 10000)
    with pytest.raises(ValueError, match="config.json"):
        stored_train_config(str(tmp_path / "old.pt"), {"config": {}})


# ---- ca_rev139 (strict xfail: review of 3de4598)

@pytest.mark.slow  # end-to-end: training runs (CI; the fast suite stays under a minute)
def test_ca_rev139_a_resume_with_datasets_keeps_the_checkpoints_data_split(tmp_path):
    """train(config, datasets=(t, v), data_split={...}) (as the experiment's _train_one), then train(config with
    resume=RUN/last.pt and 2 epochs, datasets=(t, v)) (the API's resume with the data handed again).  Expected:
    the new checkpoints still record the split (data_not_rebuilt is not None: epoch 1 was trained on data the
    configuration does not rebuild), or the resume refused.  Observed: its last.pt records none, so
    `train --resume OUT/last.pt` and `explain` accept it and rebuild other images (measured with the
    experiment's own _train_one on its protocol splits: data_not_rebuilt False after the resume)."""
    from dataclasses import replace

    from convex_attention.paper.train import data_not_rebuilt

    train_set, val_set = SyntheticLesions(16, 32, seed=5), SyntheticLesions(8, 32, seed=6)
    config = TrainConfig.build(out=str(tmp_path / "run"), epochs=1, **FAST)
    first = train(config, datasets=(train_set, val_set), data_split={"by": "a protocol", "data_seed": 7})
    assert data_not_rebuilt(read_checkpoint(first["last"])) is not None
    more = replace(config, out=str(tmp_path / "more"), epochs=2, resume=first["last"])
    again = train(more, datasets=(train_set, val_set))
    assert data_not_rebuilt(read_checkpoint(again["last"])) is not None


# ---- ca_rev173 (review of 2d837fc; its strict xfails now pass)


def test_ca_rev173_library_resume_refuses_other_validation_data(tmp_path):
    """Run: train(TrainConfig.build(out=OUT, epochs=1, **FAST)), then train(the same with epochs=2, n_val=12,
    difficulty=0.9, resume=OUT/last.pt).  Expected: ValueError naming the data setting (as `train --resume
    --n-val 12` is refused, and as check_resume refuses another seed on the library's path since ca_rev74: the
    epochs' validation AUCs, which pick best.pt, would compare two validation sets).  Observed: the run goes on,
    epoch 2 scored on 12 images of difficulty 0.9, epoch 1 on 8 of difficulty 0.5, best.pt chosen across both."""
    out = str(tmp_path / "run")
    train(TrainConfig.build(out=out, epochs=1, **FAST))
    with pytest.raises(ValueError, match="n_val|difficulty"):
        train(TrainConfig.build(out=out, epochs=2, resume=os.path.join(out, "last.pt"),
                                **{**FAST, "n_val": 12, "difficulty": 0.9}))


@pytest.mark.slow  # end-to-end: training runs (CI; the fast suite stays under a minute)
def test_ca_rev173_a_resumed_run_selects_the_best_epoch_of_an_uninterrupted_one_when_no_auc_is_defined(
        tmp_path, monkeypatch):
    """Run: validation AUCs NaN every epoch (a validation set of one class handed to train(), which checks only
    its channels and size; scripted here).  train(epochs=2) into FULL; train(epochs=1) into PART, then
    train(epochs=2, resume=PART/last.pt).  Expected: both select epoch 1 (the uninterrupted run keeps the first
    epoch of undefined AUC: best -inf, never beaten by NaN).  Observed: the resumed run selects epoch 2 and writes
    its best.pt: restore() leaves self.best None when no AUC is finite, so the next epoch counts as the first."""
    _scripted_aucs(monkeypatch, [float("nan")] * 4)
    full = train(TrainConfig.build(out=str(tmp_path / "full"), epochs=2, **FAST))
    part = str(tmp_path / "part")
    train(TrainConfig.build(out=part, epochs=1, **FAST))
    resumed = train(TrainConfig.build(out=part, epochs=2, resume=os.path.join(part, "last.pt"), **FAST))
    assert full["best_epoch"] == 1
    assert resumed["best_epoch"] == 1
    assert read_checkpoint(os.path.join(part, "best.pt"))["epoch"] == 1


@pytest.mark.slow  # end-to-end: training runs (CI; the fast suite stays under a minute)
def test_ca_rev173_a_checkpoint_whose_metrics_run_past_its_epoch_does_not_duplicate_rows(tmp_path):
    """Run: a 2-epoch run's last.pt with its epoch set to 1 (metrics rows of epochs 1 and 2 kept; a tampered or
    damaged file), saved as OTHER/ck.pt; train(epochs=3, resume=OTHER/ck.pt, out=NEW).  Expected: refused
    (ValueError: its metrics do not match its epoch), or a metrics.csv with each epoch once.  Observed: accepted
    (read_checkpoint checks each row has an epoch, not that they are 1..epoch); NEW/metrics.csv holds epochs
    1, 2, 2, 3 (`convex-attention train --resume OTHER/ck.pt --epochs 3 --out NEW`: the same, exit 0)."""
    out = str(tmp_path / "run")
    train(TrainConfig.build(out=out, epochs=2, **FAST))
    state = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    state["epoch"] = 1
    os.makedirs(tmp_path / "other")
    ck = str(tmp_path / "other" / "ck.pt")
    torch.save(state, ck)
    new = str(tmp_path / "new")
    try:
        train(TrainConfig.build(out=new, epochs=3, resume=ck, **FAST))
    except ValueError:
        return
    epochs = [int(r["epoch"]) for r in read(os.path.join(new, "metrics.csv"))]
    assert len(epochs) == len(set(epochs)), epochs


def test_ca_rev173_a_damaged_best_epoch_is_refused_in_one_line(tmp_path):
    """Run: last.pt of a 1-epoch run with best_epoch set to [1] (a tampered file; read_checkpoint checks no
    best_epoch); train(epochs=2, resume=it), as `convex-attention train --resume OUT/last.pt --epochs 2` does.
    Expected: ValueError (one line: the checkpoint is damaged), or the selection found again from its metrics as
    for a best_epoch of another epoch.  Observed: TypeError: unhashable type: 'list' from _Run.restore
    (`self.best_epoch not in aucs`); the command prints a traceback, exit 1."""
    out = str(tmp_path / "run")
    train(TrainConfig.build(out=out, epochs=1, **FAST))
    last = os.path.join(out, "last.pt")
    state = torch.load(last, weights_only=True)
    state["best_epoch"] = [1]
    torch.save(state, last)
    try:
        train(TrainConfig.build(out=out, epochs=2, resume=last, **FAST))
    except ValueError:
        pass


# ---- ca_rev197 (review of b98ce6f; its strict xfails now pass)


class _CaRev197Overflow(torch.autograd.Function):
    """Identity forward; the backward scales the gradient by 1e30: finite, but its square overflows float32."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * 1e30


class _CaRev197Overflowing(AttentionUNet):
    """A model whose first training step has finite loss and finite gradients that overflow in Adam's square."""

    calls = 0

    def loss(self, out, labels):
        if torch.is_grad_enabled():
            type(self).calls += 1
            if type(self).calls == 1:
                from dataclasses import replace

                out = replace(out, logits=_CaRev197Overflow.apply(out.logits))
        return super().loss(out, labels)


@pytest.mark.slow  # end-to-end: tiny training runs, resumed (1-3 s)
def test_ca_rev197_a_run_whose_optimiser_state_is_not_finite_stops_or_its_last_pt_resumes(tmp_path):
    """Run: train(epochs=1, **FAST) of a model whose first step's gradients are finite (loss finite) but overflow
    when Adam squares them (exp_avg_sq Inf: those weights then get a 0 update and stay frozen for the rest of the
    run, without a word).  Expected: TrainingDiverged (the optimiser state is no longer finite), or a last.pt
    that train --resume continues.  Observed: the epoch finishes, metrics.csv, best.pt and last.pt are written as
    fine (exit 0 from the command), and train(epochs=2, resume=last.pt) refuses that last.pt: 'holds an
    optimiser state that is not all finite (parameter 0 exp_avg_sq, ... and 31 more): the first update would
    make the weights NaN' (train.py _Run.epoch/_record check the loss and the outputs, never the optimiser
    state that check_resume refuses)."""
    from convex_attention.paper.train import TrainingDiverged

    _CaRev197Overflowing.calls = 0
    out = str(tmp_path / "run")
    try:
        train(TrainConfig.build(out=out, epochs=1, **FAST), model_class=_CaRev197Overflowing)
    except TrainingDiverged:
        return
    train(TrainConfig.build(out=out, epochs=2, resume=os.path.join(out, "last.pt"), **FAST))


@pytest.mark.slow  # end-to-end: tiny training runs, resumed (0.5-1 s)
@pytest.mark.parametrize("setting,value", [("maximize", True), ("amsgrad", True), ("eps", 10.0)])
def test_ca_rev197_resume_trains_with_the_run_s_adam_not_settings_found_in_the_checkpoint(tmp_path, setting, value):
    """Run: last.pt of a 1-epoch run with its optimiser param_groups' maximize set True (or amsgrad True, or eps
    10; a tampered file or another program's, all within what read_checkpoint checks), then train(epochs=2,
    resume=last.pt).  Expected: refused before any work (ValueError), or the resumed run trains with the Adam
    that training builds (lr and weight_decay are reset to the configuration's, the rest likewise).  Observed:
    maximize: the run goes on by gradient ascent (train loss 0.627 then 0.696 over a 3-epoch resume), nothing
    recorded; eps: taken silently; amsgrad: KeyError 'max_exp_avg_sq' from Adam's first step, after the work
    started (`convex-attention train --resume` prints a traceback, exit 1).  _Run.restore resets only lr and
    weight_decay; _optimizer_problem checks only betas and step."""
    out = str(tmp_path / "run")
    train(TrainConfig.build(out=out, epochs=1, **FAST))
    last = os.path.join(out, "last.pt")
    state = torch.load(last, weights_only=True)
    for group in state["optimizer"]["param_groups"]:
        group[setting] = value
    torch.save(state, last)
    try:
        train(TrainConfig.build(out=out, epochs=2, resume=last, **FAST))
    except ValueError:
        return
    fresh = torch.optim.Adam([torch.zeros(1)]).defaults
    groups = read_checkpoint(last)["optimizer"]["param_groups"]
    assert all(g[setting] == fresh[setting] for g in groups), [g[setting] for g in groups]


@pytest.mark.slow  # end-to-end: tiny training runs, resumed (0.5-1 s)
def test_a_resume_trains_with_the_implementation_training_builds_not_the_checkpoints(tmp_path):
    """ca_rev197's near-miss: a checkpoint whose Adam says capturable True (an implementation's key, not a
    setting of ADAM_KEEPS) had raised an AssertionError on CPU after the work started; resumed, the run takes
    training's own keys and goes on."""
    out = str(tmp_path / "run")
    train(TrainConfig.build(out=out, epochs=1, **FAST))
    last = os.path.join(out, "last.pt")
    state = torch.load(last, weights_only=True)
    for group in state["optimizer"]["param_groups"]:
        group["capturable"] = True
    torch.save(state, last)
    train(TrainConfig.build(out=out, epochs=2, resume=last, **FAST))
    groups = read_checkpoint(last)["optimizer"]["param_groups"]
    assert [g["capturable"] for g in groups] == [False] * len(groups) and read_checkpoint(last)["epoch"] == 2


# ---- ca_rev209 (mutation review of ec87765)


@pytest.mark.parametrize("setting,value", [("alpha", 1.0), ("solver_options", {"tol": 1e-7})])
def test_ca_rev209_resume_refuses_another_alpha_or_solver_options(setting, value):
    """Kills RESUME_KEEPS without "alpha" or without "solver_options": the resumed run would train (and select
    best.pt) with settings its earlier epochs never used, and record only the new ones."""
    from convex_attention.paper.train import check_resume

    method = dict(method="dual")
    stored = _resume_state(TrainConfig.build(**method, **FAST))
    assert check_resume(TrainConfig.build(epochs=3, resume="last.pt", **method, **FAST), stored) == 2
    with pytest.raises(ValueError, match=f"other settings \\({setting}: checkpoint"):
        check_resume(TrainConfig.build(epochs=3, resume="last.pt", **method, **{setting: value}, **FAST), stored)


@pytest.mark.parametrize("setting,value", [("betas", (0.5, 0.9)), ("decoupled_weight_decay", True)])
def test_ca_rev209_resume_refuses_an_optimiser_state_of_other_betas_or_decoupled_decay(setting, value):
    """Kills ADAM_KEEPS without "betas" (or without "decoupled_weight_decay"): _Run.restore would then reset the
    setting to training's silently, reading the checkpoint's moments under betas they were not built with."""
    from convex_attention.paper.train import _training_adam, check_resume

    config = TrainConfig.build(epochs=3, resume="last.pt", **FAST)
    group = {**_training_adam(config), "params": [0]}
    if setting not in group:
        pytest.skip(f"this torch's Adam has no {setting}")
    assert check_resume(config, _resume_state(config, optimizer={"state": {}, "param_groups": [group]})) == 2
    damaged = {"state": {}, "param_groups": [{**group, setting: value}]}
    with pytest.raises(ValueError, match=f"another optimiser than training's Adam \\({setting}: checkpoint"):
        check_resume(config, _resume_state(config, optimizer=damaged))


@pytest.mark.slow  # end-to-end: tiny training runs, resumed (~1 s)
def test_ca_rev209_a_stored_best_epoch_without_a_finite_auc_yields_to_the_finite_aucs_on_resume(tmp_path, monkeypatch):
    """Kills restore's `if self.best_epoch not in aucs and aucs` weakened to `if self.best_epoch is None and aucs`:
    a checkpoint naming as best an epoch of undefined AUC (epoch 2, NaN) while epoch 1 has 0.8 would leave the
    selection at -inf, and the resumed epoch 3 (AUC 0.7) would take best.pt from the better epoch 1."""
    _scripted_aucs(monkeypatch, [0.8, float("nan"), 0.7])
    out = str(tmp_path / "run")
    last = os.path.join(out, "last.pt")
    assert train(TrainConfig.build(out=out, epochs=2, **FAST))["best_epoch"] == 1
    state = torch.load(last, weights_only=True)
    state["best_epoch"] = 2  # names the epoch whose AUC is undefined
    torch.save(state, last)
    result = train(TrainConfig.build(out=out, epochs=3, resume=last, **FAST))
    assert result["best_epoch"] == read_checkpoint(last)["best_epoch"] == 1
    assert read_checkpoint(os.path.join(out, "best.pt"))["epoch"] == 1


class _DrawsFromTorchsGenerator(AttentionUNet):
    """A model whose loss draws from torch's global generator (as dropout would)."""

    def loss(self, out, labels):
        return super().loss(out, labels) * (1 + 0.5 * torch.rand(()))


@pytest.mark.slow  # end-to-end: tiny training runs, resumed (~1.5 s)
def test_ca_rev209_a_resumed_run_restores_torchs_global_generator(tmp_path):
    """Kills _restore_rng without `torch.set_rng_state(rng["torch"])`: a model drawing from torch's global
    generator (dropout; here its loss) resumed with the state of a fresh build, not of an uninterrupted run."""
    from convex_attention.paper.train import weights_digest

    draws = _DrawsFromTorchsGenerator
    whole = train(TrainConfig.build(out=str(tmp_path / "whole"), epochs=2, **FAST), model_class=draws)
    out = str(tmp_path / "parts")
    train(TrainConfig.build(out=out, epochs=1, **FAST), model_class=draws)
    last = os.path.join(out, "last.pt")
    resumed = train(TrainConfig.build(out=out, epochs=2, resume=last, **FAST), model_class=draws)
    assert weights_digest(resumed["model"]) == weights_digest(whole["model"])


def test_the_three_lists_of_metrics_columns_name_metric_columns_in_order():
    """metrics.csv's columns are listed in three places besides METRIC_COLUMNS: the module's docstring,
    docs/user_guide.md (§ 4) and docs/results_format.md ("train"). Each names every column once, in the
    file's order, and no other."""
    import re
    from pathlib import Path

    import convex_attention.paper.train as train_module

    docs = Path(__file__).resolve().parents[1] / "docs"
    guide = (docs / "user_guide.md").read_text(encoding="utf-8")
    formats = (docs / "results_format.md").read_text(encoding="utf-8")
    lists = {
        "train's docstring": train_module.__doc__.split("``metrics.csv`` columns:", 1)[1].split("(:data:", 1)[0],
        "user_guide.md": guide.split("`metrics.csv` has per epoch:", 1)[1].split("BatchNorm", 1)[0],
        "results_format.md": formats.split("`metrics.csv`, one row per epoch:", 1)[1].split("(`paper.train.", 1)[0],
    }
    for where, text in lists.items():
        named = tuple(re.findall(r"`+([a-z_0-9]+)`+", text))
        assert named == METRIC_COLUMNS, where


# ---- ca_rev245 (DDP on torch 2.7.1)

_BACKEND_OUTLIVES_THE_GROUP = """
import os, socket
import torch.distributed as dist
import convex_attention.paper.train as T

def threads():
    return len(os.listdir("/proc/self/task"))

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
before = threads()
T._init_process_group("gloo")
dist.broadcast_object_list([1], src=0)  # as _agree_on_the_resume
destroy, at_destroy = dist.destroy_process_group, []
def counting_destroy(*args, **kwargs):
    destroy(*args, **kwargs)
    at_destroy.append(threads() > before)
dist.destroy_process_group = counting_destroy
T._destroy_process_group()
print(f"threads left by destroy_process_group: {at_destroy}; at the end: {threads() > before}; "
      f"open: {dist.is_initialized()}")
"""


@pytest.mark.slow  # a process group in a subprocess (2-4 s)
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts the process's threads through /proc")
def test_the_group_s_backend_joins_its_threads_after_destroy_process_group():
    """torch 2.7.1 frees a ProcessGroup with the GIL held: destroy_process_group joined Gloo's
    workers there, and rank 0 of a resume whose data failed hung forever, a worker still freeing
    broadcast_object_list's tensors waiting for the GIL (ca_rev245: 5 runs of 13 of
    test_a_resume_whose_data_fail_after_the_ranks_agreed_closes_its_process_group).  The backend,
    held past the group, is freed by its own Python object, without the GIL: its threads are
    still alive when destroy_process_group returns (not with dist.destroy_process_group alone),
    gone when _destroy_process_group does."""
    proc = subprocess.run([sys.executable, "-c", _BACKEND_OUTLIVES_THE_GROUP], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == ("threads left by destroy_process_group: [True]; at the end: False; "
                                            "open: False")


# ---- ca_rev255 (training crash and resume probe)


def _ca_rev255_checkpoint(path, seed=5, rows=(0.5, 0.6), **fields):
    """A checkpoint as training writes it, with one metrics row per epoch (AUCs ``rows``)."""
    from helpers import TINY

    from convex_attention.paper.models import save_checkpoint

    config = TrainConfig.build(**{**TINY, "epochs": 4, "seed": seed, "out": os.path.dirname(path), **fields})
    model = AttentionUNet(config=config.model)
    metrics = [{"epoch": i + 1, "val_auc": auc} for i, auc in enumerate(rows)]
    return save_checkpoint(str(path), model, torch.optim.Adam(model.parameters()), epoch=len(rows), metrics=metrics,
                           extra={"train_config": config.to_dict()})


@pytest.mark.parametrize("theirs", [{"width": 8}, {"seed": 9}])
def test_ca_rev255_resume_refuses_a_folder_whose_best_pt_is_another_runs(tmp_path, theirs):
    """A last.pt of another run (another width, another seed) put into a run's folder and resumed
    there.  Observed: it went on without a word, and its next best epoch replaced the folder's
    best.pt (with its metrics.csv and config.json), although a best.pt that is not a checkpoint of
    this run is documented as never touched."""
    from argparse import Namespace

    from convex_attention.cli._common import UsageError
    from convex_attention.cli.paper import check_resume_folder

    out = tmp_path / "run"
    out.mkdir()
    _ca_rev255_checkpoint(out / "best.pt", rows=(0.9,))
    _ca_rev255_checkpoint(out / "last.pt", rows=(0.4, 0.5), **theirs)
    state = read_checkpoint(str(out / "last.pt"))
    config = TrainConfig.build(out=str(out), epochs=4, resume=str(out / "last.pt"))
    with pytest.raises(UsageError, match=f"best.pt that is not of the run .*{next(iter(theirs))}"):
        check_resume_folder(config, Namespace(resume=str(out / "last.pt")), state)


def test_ca_rev255_resume_accepts_the_runs_own_best_pt(tmp_path):
    from argparse import Namespace

    from convex_attention.cli.paper import check_resume_folder

    out = tmp_path / "run"
    out.mkdir()
    _ca_rev255_checkpoint(out / "best.pt", rows=(0.5, 0.6))
    _ca_rev255_checkpoint(out / "last.pt", rows=(0.5, 0.6, 0.4))
    config = TrainConfig.build(out=str(out), epochs=4, resume=str(out / "last.pt"))
    check_resume_folder(config, Namespace(resume=str(out / "last.pt")), read_checkpoint(str(out / "last.pt")))


def test_watch_launcher_sends_sigterm_once_its_parent_is_gone(monkeypatch):
    """A rank ends with its launcher: torchrun killed outright passes no signal on, and its ranks had
    trained on to their last epoch, holding --out's lock (a review)."""
    import signal

    import convex_attention.paper.train as T

    sent = []
    monkeypatch.setattr(T.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    monkeypatch.setattr(T, "LAUNCHER_POLL_S", 0.01)
    monkeypatch.setattr(T, "_watched_parents", set())
    gone = os.getppid() + 1_000_000  # not this process's parent: the launcher is gone
    thread = T.watch_launcher(gone)
    thread.join(10)
    assert not thread.is_alive() and sent == [(os.getpid(), signal.SIGTERM)]
    assert T.watch_launcher(gone) is None  # one watch per parent


def _processes_naming(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the ranks through /proc")
def test_the_ranks_stop_when_torchrun_is_killed_outright(tmp_path):
    """SIGKILL to torchrun reaches none of its ranks: they trained on to the last of 400 epochs, holding the lock
    (a review); each now stops as on SIGTERM once its launcher is gone, last.pt kept."""
    import time

    out = str(tmp_path / "ddp-killed")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "convex_attention.cli", "train", "--method", "softmax", "--image-size", "32", "--width", "4",
           "--n-train", "16", "--n-val", "8", "--epochs", "400", "--batch-size", "8", "--device", "cpu",
           "--out", out, "--no-progress"]
    launcher = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(os.path.join(out, "last.pt")):
            assert launcher.poll() is None and time.monotonic() < deadline, "the run ended or never trained"
            time.sleep(0.2)
        assert len(_processes_naming(out)) == 3  # torchrun and its two ranks
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 60
        while _processes_naming(out) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _processes_naming(out)
        assert left == [], f"ranks still running: {left}"
    finally:
        launcher.kill()
        for pid in _processes_naming(out):
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
    assert len(read(os.path.join(out, "metrics.csv"))) < 400 and os.path.exists(os.path.join(out, "last.pt"))


# ---- ca_rev275 (hostile review of the session's diff)

@pytest.mark.parametrize("run_id, watched", [(None, False), ("", False), ("a-run", True)])
def test_ca_rev275_only_a_torchrun_rank_watches_its_parent(monkeypatch, run_id, watched):
    """Ranks started by hand (env://, WORLD_SIZE set, nohup'd by a script that then ends) were sent SIGTERM once
    that script ended (they had trained to their last epoch before): only torchrun's ranks, which it names its run
    in (TORCHELASTIC_RUN_ID), end with their parent."""
    import convex_attention.paper.train as T

    class _Stop(Exception):
        pass

    watches = []
    monkeypatch.setattr(T, "_distributed", lambda: (2, 0, 0))
    monkeypatch.setattr(T, "watch_launcher", lambda *a: watches.append(a))
    monkeypatch.setattr(T, "_init_process_group", lambda backend: (_ for _ in ()).throw(_Stop()))
    monkeypatch.setattr(T.dist, "is_initialized", lambda: False)
    if run_id is None:
        monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    else:
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", run_id)
    with pytest.raises(_Stop):
        T._Run(None, None, None, log=lambda *a, **k: None)
    assert bool(watches) is watched


# ---- the 47th session (a batch of one image per rank)

@pytest.mark.parametrize("world, n_train, refused", [(2, 2, True), (3, 2, True), (1, 1, True), (2, 3, False)])
def test_no_rank_trains_on_batches_of_one_image_before_a_batchnorm_over_a_one_by_one_map(
        monkeypatch, tmp_path, world, n_train, refused):
    """16x16 images with the bottleneck in use end the encoder in a BatchNorm over a 1x1 map.  The configuration
    refuses n_train 1 and batch_size 1, but under torchrun n_train images, no more than batch_size x world of them,
    are one batch of ceil(n_train / world) per rank: 2 images over 2 ranks were one image per rank, and every rank
    ended in torch's BatchNorm traceback.  Refused before any work, naming n_train, where that batch is one image
    (handed-in data too: one image and one rank); norm group trains."""
    import convex_attention.paper.train as T
    from convex_attention.paper.config import ConfigError, TrainConfig

    class _Built(Exception):
        pass

    monkeypatch.setattr(T, "_distributed", lambda: (world, 0, 0))
    monkeypatch.setattr(T, "_Run", lambda *a, **k: (_ for _ in ()).throw(_Built()))
    small = dict(data="synthetic-blobs", image_size=16, width=4, embed_channels=8, attention_blocks=(4, 5),
                 batch_size=4, n_val=4, epochs=1, out=str(tmp_path / "run"))
    config = TrainConfig.build(**small, n_train=max(n_train, 2))
    images = [(torch.randn(3, 16, 16), k % 2) for k in range(n_train)]
    val = [(torch.randn(3, 16, 16), k % 2) for k in range(4)]
    datasets = T.CheckedData(images, val)
    with pytest.raises(ConfigError if refused else _Built) as err:
        T.train(config, datasets=datasets)
    if refused:
        assert err.value.field == "n_train" and f"{n_train} training image(s) over {world} rank(s)" in str(err.value)
    with pytest.raises(_Built):
        T.train(TrainConfig.build(**small, n_train=max(n_train, 2), norm="group"), datasets=datasets)


# ---- ca_rev290 (types of paper)


def test_a_resume_state_without_config_resume_is_refused_before_any_work(tmp_path):
    """Before: ``train(config, resume_state=state)`` without ``config.resume`` (the path the state was read
    from) made --out, wrote its config.json, and ended in a TypeError of os.path.abspath(None) where best.pt
    is carried from beside config.resume (found by mypy: ca_rev290).  Now a ValueError before any work."""
    tiny = {**TINY, "n_train": 16, "n_val": 8}
    train(TrainConfig.build(out=str(tmp_path / "a"), epochs=1, **tiny))
    state = read_checkpoint(str(tmp_path / "a" / "last.pt"))
    with pytest.raises(ValueError, match="set config.resume"):
        train(TrainConfig.build(out=str(tmp_path / "b"), epochs=2, **tiny), resume_state=state)
    assert not (tmp_path / "b").exists()
