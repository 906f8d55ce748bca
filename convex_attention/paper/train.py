"""Training of the attention CNN on weakly annotated images (labels only, never masks).

``train(TrainConfig(...))`` or ``convex-attention train ...``.  Adam, cross-entropy (plus
``alpha · consistency_loss`` for ``learned_dual``), flips and small affine augmentation,
a seed, per-epoch metrics in ``metrics.csv``, checkpoints ``best.pt`` and ``last.pt``,
and ``--resume``.

What is measured is the model, not its BatchNorm: after every epoch the BatchNorm
statistics are recomputed over the training images (one pass in train mode without
gradients, before evaluation and checkpointing), so evaluation mode uses statistics of
the final weights rather than a running average over weights that kept changing
(``recompute_bn``; ``norm="group"`` avoids batch statistics altogether).  ``best.pt`` is
the epoch of highest validation ROC AUC (threshold-free); each epoch also reports the
balanced accuracy at the decision threshold chosen on validation (Youden's J on the
ROC curve), next to the balanced accuracy of the argmax.

``metrics.csv`` columns: ``epoch``, ``train_loss``, ``train_acc``, ``val_loss``,
``val_acc``, ``val_balanced_acc`` (argmax), ``val_violation`` (mean attention violation),
``epoch_time_s``, ``lr``, ``val_auc``, ``val_threshold`` (on p(class 1)),
``val_threshold_log_odds`` (the same on the log-odds), ``val_balanced_acc_at_threshold``
(:data:`METRIC_COLUMNS`).

Configuration: :class:`TrainConfig` holds the :class:`ModelConfig` (``config.model``) and
is stored whole in every checkpoint, so ``--resume CKPT`` needs no other flag.

Multi-machine: the same code runs under ``torchrun`` with DistributedDataParallel (gloo on
CPU, nccl on GPU), a DistributedSampler, and logging and checkpoints on rank 0 only.  At
the end every rank hashes its weights; rank 0 writes ``ddp_check.json``.  A rank whose
torchrun is gone (killed outright) stops as on SIGTERM (:func:`watch_launcher`).
"""
from __future__ import annotations

import gc
import hashlib
import math
import os
import random
import signal
import threading
import time
import weakref
from collections.abc import Sized
from dataclasses import replace
from typing import NamedTuple, cast

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..io.files import atomic_csv, atomic_write_bytes, read_json, write_json
from .config import (
    ConfigError,
    ModelConfig,
    TrainConfig,
    batchnorm_of_one_reason,
    batchnorm_of_one_value,
    check_device,
    resolved_device,
)
from .data import datasets_of, labels_only
from .models import (
    AttentionUNet,
    NonFiniteOutput,
    load_checkpoint,
    non_finite_parts,
    read_checkpoint,
    save_checkpoint,
)

__all__ = ["TrainConfig", "train", "evaluate", "augment", "classification_metrics", "check_device",
           "recompute_batchnorm", "stored_train_config", "data_not_rebuilt", "build_checked_datasets", "check_data",
           "check_resume", "same_history", "check_no_batch_of_one",
           "check_validation_classes", "ValidationClassesError", "CheckedData",
           "TrainingDiverged", "diagnose_divergence", "METRIC_COLUMNS"]

METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc", "val_violation",
                  "epoch_time_s", "lr", "val_auc", "val_threshold", "val_threshold_log_odds",
                  "val_balanced_acc_at_threshold")



def same_history(theirs, mine) -> bool | None:
    """Whether two checkpoints' metrics histories (their ``metrics`` rows) agree row for row
    over the epochs both hold, as two checkpoints of one run do; None where they share no
    epoch (nothing tells).  The one test of "the same run" for a ``best.pt`` beside a resumed
    checkpoint (:meth:`_Run._reconcile_best`, the command's refusal of another run's)."""
    shared = min(len(theirs), len(mine))
    if shared == 0:
        return None
    return [repr(r) for r in theirs[:shared]] == [repr(r) for r in mine[:shared]]


def stored_train_config(path: str, state: dict) -> TrainConfig | None:
    """The training configuration behind a checkpoint: the one it stores, else (checkpoints
    from before it stored one) the run's ``config.json`` next to it, with its model
    fields replaced by the checkpoint's own; ``None`` if neither exists."""
    if state.get("train_config") is not None:
        return TrainConfig.from_dict(state["train_config"])
    cfg_path = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if not os.path.exists(cfg_path):
        return None
    try:
        data = read_json(cfg_path)  # config.json is written strict: NaN never
    except (OSError, ValueError, RecursionError) as err:  # (nested too deep: a traceback before, ca_rev130)
        raise ValueError(f"{cfg_path!r} beside the checkpoint is not readable JSON ({type(err).__name__}: "
                         f"{str(err)[:200]})") from None
    config = TrainConfig.from_dict(data)
    return replace(config, model=ModelConfig.from_dict(state["config"]))


# ---------------------------------------------------------------------------- helpers

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def augment(images: torch.Tensor, generator: torch.Generator, max_rotation_deg: float = 10.0,
            max_shift: float = 0.05, max_zoom: float = 0.05) -> torch.Tensor:
    """Random horizontal/vertical flips and a small affine warp per image (batched)."""
    B = images.shape[0]
    u = torch.rand(B, 6, generator=generator)
    flip_x = torch.where(u[:, 0] < 0.5, -1.0, 1.0)
    flip_y = torch.where(u[:, 1] < 0.5, -1.0, 1.0)
    angle = (u[:, 2] * 2 - 1) * math.radians(max_rotation_deg)
    zoom = 1 + (u[:, 3] * 2 - 1) * max_zoom
    shift = (u[:, 4:6] * 2 - 1) * max_shift * 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # input coordinates = rotation/zoom · diag(flips) · output coordinates + shift
    theta = torch.stack([torch.stack([cos * flip_x, -sin * flip_y, shift[:, 0]], 1),
                         torch.stack([sin * flip_x, cos * flip_y, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def balanced_accuracy(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean per-class recall over the ``num_classes`` classes; NaN when a class has no
    image (a recall that cannot be measured is not a perfect one: one class alone would
    otherwise score 1.0 by always predicting it)."""
    if not all(bool((target == c).any()) for c in range(num_classes)):
        return float("nan")
    return float(np.mean([float((pred[target == c] == c).float().mean()) for c in range(num_classes)]))


def weights_digest(model: torch.nn.Module, buffers: bool = True) -> str:
    """SHA-256 of the model's parameters (and buffers): equal digests, equal models."""
    h = hashlib.sha256()
    tensors = model.state_dict() if buffers else dict(model.named_parameters())
    for name, t in sorted(tensors.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


#: Seconds between a rank's checks that its launcher is still its parent (:func:`watch_launcher`).
LAUNCHER_POLL_S = 0.5
_watched_parents: set[int] = set()


def watch_launcher(parent: int | None = None) -> threading.Thread | None:
    """A daemon thread that sends this process SIGTERM once ``parent`` (by default its parent
    now: torchrun, which started the rank) is no longer its parent.  A launcher killed outright
    (SIGKILL, the OOM killer) passes no signal on: its ranks had trained on to their last epoch,
    holding ``--out``'s lock (a review: 378 epochs after the kill, ca_rev273).  The command takes
    that SIGTERM as any other (``last.pt`` kept, exit 143); called from Python, SIGTERM's default
    action ends the process.  One watch per parent (None where it runs already)."""
    parent = os.getppid() if parent is None else parent
    if parent in _watched_parents:
        return None
    _watched_parents.add(parent)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(LAUNCHER_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="watch-launcher", daemon=True)
    thread.start()
    return thread


def _init_process_group(backend: str) -> None:
    """``dist.init_process_group``, with ``torch._dynamo`` imported first.

    DistributedDataParallel imports ``torch._dynamo``; imported after the group exists,
    it keeps a reference to the group (torch 2.13), so ``destroy_process_group`` no longer
    frees it: Gloo's worker threads then live on into the interpreter's shutdown, where a
    thread that still touches Python aborts the process: the likely cause of the one CI
    failure of the two-process test ("terminate called without an active exception",
    SIGABRT on one rank; see :meth:`_Run.finish` for what such a thread is doing, seen
    when it deadlocked instead).  Imported first, it holds nothing, and
    ``destroy_process_group`` joins the threads
    (tests/test_train.py::test_training_ends_with_no_gloo_thread_left_and_the_group_freed_by_its_owner)."""
    import torch._dynamo  # noqa: F401  (the import's side effect is the point)

    dist.init_process_group(backend=backend)


def _destroy_process_group() -> None:
    """``dist.destroy_process_group``, its backends (Gloo's, NCCL's) freed after it and
    without the GIL.

    The backend's destructor joins its worker threads, and a worker may still be dropping
    a finished collective whose tensors have Python objects (``broadcast_object_list``'s,
    when the data fail right after :func:`_agree_on_the_resume`): it needs the GIL to free
    them.  torch 2.13 and 2.15 bind ``ProcessGroup`` with a holder that releases the GIL in
    its destructor; torch 2.7.1 does not (its ``ProcessGroupGloo`` and ``ProcessGroupNCCL``
    bindings do), so there ``destroy_process_group`` freed the group, and with it the
    backend, holding the GIL: rank 0 hung forever in ``ProcessGroupGloo::~ProcessGroupGloo``
    joining a worker stuck in ``gil_scoped_acquire`` (ca_rev245, seen in 5 runs of 13 of
    tests/test_train.py::test_a_resume_whose_data_fail_after_the_ranks_agreed_closes_its_process_group).
    Held here past the group, each backend's last owner is its own Python object, whose
    binding releases the GIL on every torch this package accepts."""
    group = dist.group.WORLD
    backends = []
    for device in getattr(group, "_device_types", ()):  # private API: where absent, as before
        assert group is not None  # (None has no _device_types: the loop runs only on a group)
        try:
            backends.append(group._get_backend(device))
        except RuntimeError:  # no backend for that device
            pass
    del group
    dist.destroy_process_group()
    backends.clear()  # the threads are joined here, the GIL released


def _backend(config: TrainConfig) -> str:
    """The process group's backend: NCCL where the run trains on CUDA, else Gloo."""
    return "nccl" if (torch.cuda.is_available() and config.device != "cpu") else "gloo"


def _device(config: TrainConfig, local_rank: int) -> torch.device:
    return torch.device(resolved_device(config.device, local_rank))


def classification_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict:
    """Accuracy, balanced accuracy (argmax), ROC AUC and the balanced accuracy at the
    threshold chosen on these data, from ``logits`` ``(N, C)`` and ``target`` ``(N,)``.

    Two classes: AUC of the log-odds ``logits[:, 1] − logits[:, 0]`` (scikit-learn's
    ``roc_auc_score``; the ranking of p(class 1), without the ties its rounding to 1.0 makes
    for margins above ~37); the threshold maximises balanced accuracy, i.e. Youden's J =
    TPR − FPR on the ROC curve, and is reported on p(class 1) (the sigmoid of the log-odds).
    More classes: one-vs-rest macro AUC, no threshold.  Undefined values (one class only
    present) are NaN.
    """
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score, roc_curve

    num_classes = logits.shape[1]
    probs = torch.softmax(logits.double(), 1).numpy()
    y = target.numpy()
    pred = probs.argmax(1)
    out = {"val_acc": float((pred == y).mean()), "val_balanced_acc": balanced_accuracy(
        torch.from_numpy(pred), target, num_classes), "val_auc": math.nan, "val_threshold": math.nan,
        "val_threshold_log_odds": math.nan, "val_balanced_acc_at_threshold": math.nan}
    present = np.unique(y)
    if num_classes == 2 and len(present) == 2:
        # ranked by the log-odds, not p(class 1): softmax rounds to exactly 1.0 for margins above
        # ~37, and ties there would lose the ranking (the AUC) and the threshold
        log_odds = (logits[:, 1].double() - logits[:, 0].double()).numpy()
        out["val_auc"] = float(roc_auc_score(y, log_odds))
        fpr, tpr, thresholds = roc_curve(y, log_odds)
        finite = np.isfinite(thresholds)
        j = np.where(finite, tpr - fpr, -np.inf)
        threshold = float(thresholds[int(np.argmax(j))])
        out["val_threshold"] = float(torch.sigmoid(torch.tensor(threshold, dtype=torch.float64)))  # on p(class 1)
        # and as chosen: above ~37 the probability rounds to exactly 1.0 and can no longer tell
        # a test image below the threshold from one above it (a review)
        out["val_threshold_log_odds"] = threshold
        out["val_balanced_acc_at_threshold"] = float(balanced_accuracy_score(y, (log_odds >= threshold).astype(int)))
    elif num_classes > 2 and len(present) == num_classes:
        out["val_auc"] = float(roc_auc_score(y, probs, multi_class="ovr"))
    return out


@torch.no_grad()
def evaluate(model: AttentionUNet, dataset: Dataset, batch_size: int = 64, device="cpu") -> dict:
    """Loss, accuracy, balanced accuracy, ROC AUC, the chosen threshold and the balanced
    accuracy there (:func:`classification_metrics`), and the mean attention violation on
    ``dataset``, in evaluation mode.  :class:`NonFiniteOutput` (naming the parts) when the
    model's logits or maps hold NaN or Inf: no metric of them is reported."""
    model.eval()
    loader = DataLoader(labels_only(dataset), batch_size=batch_size, shuffle=False)
    losses, logits, targets, violations = [], [], [], []
    for start, (images, labels) in enumerate(loader):
        images, labels = images.to(device), labels.to(device)
        out = model(images)
        bad = non_finite_parts(out)
        if bad:  # no metric of them is a number worth reporting
            raise NonFiniteOutput(f"the model's {', '.join(bad)} hold NaN or Inf on batch {start} of the evaluated "
                                  f"images")
        losses.append(float(model.loss(out, labels)) * len(labels))
        logits.append(out.logits.detach().float().cpu())
        targets.append(labels.cpu())
        violations.append(out.solution.violation.detach().float().cpu())
    target = torch.cat(targets)
    # a model without attention (the plain CNN) has no maps to be consistent: NaN, not a perfect 0
    violation = float(torch.cat(violations).mean()) if getattr(model, "has_attention", True) else math.nan
    return {"val_loss": sum(losses) / len(target), **classification_metrics(torch.cat(logits), target),
            "val_violation": violation}


def recompute_batchnorm(model: torch.nn.Module, dataset: Dataset, batch_size: int, device) -> bool:
    """BatchNorm statistics of the current weights: reset, then one pass over ``dataset``'s
    images in train mode without gradients, averaging every batch equally
    (``torch.optim.swa_utils.update_bn``).  Returns False (and does nothing) for a model
    without BatchNorm."""
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return False
    from torch.optim.swa_utils import update_bn

    images = labels_only(dataset)
    # a last batch of one image fails in a BatchNorm over a 1x1 map (16x16 images with the bottleneck): left
    # out there, where it had ended the run in torch's traceback after the epoch's training (ca_rev264)
    config = getattr(model, "config", None)
    single = isinstance(config, ModelConfig) and batchnorm_of_one_value(config) and len(images) > batch_size
    loader = DataLoader(images, batch_size=batch_size, shuffle=False,
                        drop_last=single and len(images) % batch_size == 1)
    with torch.no_grad():
        update_bn(loader, model, device=device)
    return True


class TrainingDiverged(RuntimeError):
    """Training stopped because something became NaN or infinite (the last checkpoints stay).

    ``what`` says what diverged, where and why it is known; ``lr_may_help`` is True only
    where a smaller learning rate can help (an update made the weights or outputs
    non-finite), not for broken data or a model that overflows before any update."""

    def __init__(self, what: str, lr_may_help: bool = False, lr: float | None = None):
        self.what, self.lr_may_help, self.lr = what, lr_may_help, lr
        advice = f"; a smaller learning rate may help (lr {lr:g})" if lr_may_help and lr is not None else ""
        super().__init__(what + advice)


def diagnose_divergence(model, images: torch.Tensor, out, loss: torch.Tensor, where: str, updated: bool,
                        lr: float | None = None) -> TrainingDiverged:
    """What made a training loss non-finite, in words (:class:`TrainingDiverged`): the images,
    the weights, the model's outputs or the loss terms, checked in that order; ``updated``:
    whether any optimiser step was taken before (a learning rate can only be blamed then)."""
    value = float(loss.detach())
    if not bool(torch.isfinite(images).all()):
        return TrainingDiverged(f"the training images hold NaN or Inf {where} (the loss is {value}): the data are "
                                f"broken, not the training; check the dataset")
    bad_weights = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
    if bad_weights:
        return TrainingDiverged(f"the weights became NaN or Inf {where} ({', '.join(bad_weights[:3])}"
                                f"{' and more' if len(bad_weights) > 3 else ''})", updated, lr)
    bad = non_finite_parts(out)
    if bad:
        cause = ("after updates that left the weights finite" if updated else
                 "before any update: the initial model overflows on these images")
        return TrainingDiverged(f"the model's {', '.join(bad)} hold NaN or Inf {where}, {cause}", updated, lr)
    aux = float(out.aux_loss.detach())
    if not math.isfinite(aux):
        return TrainingDiverged(f"the consistency loss (alpha x the KL terms) is {aux} {where}, with finite logits "
                                f"and maps", updated, lr)
    return TrainingDiverged(f"the cross-entropy is {value} {where}, with finite logits and maps", updated, lr)


class CheckedData(NamedTuple):
    """Training and validation data checked against a configuration where they entered
    (:func:`build_checked_datasets`): :func:`train` does not check them again."""

    train: Dataset
    val: Dataset


def build_checked_datasets(config: TrainConfig) -> CheckedData:
    """``(train, val)`` of ``config``'s data, checked against the model (channels, size)
    and for a validation set that holds every class (:func:`check_validation_classes`);
    ValueError naming the problem and the option to change."""
    train_set, val_set = datasets_of(config)
    check_data(config, train_set, val_set)
    check_training_classes(config, train_set)
    check_validation_classes(config, val_set)
    return CheckedData(train_set, val_set)


def _class_counts(config: TrainConfig, dataset: Dataset) -> tuple[np.ndarray, list[int]]:
    """``(images per class, the classes with none)``."""
    labels = getattr(dataset, "labels", None)
    if labels is None and hasattr(dataset, "items"):  # (a folder's: read from its labels.csv)
        labels = [item[1] for item in dataset.items]
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(len(cast(Sized, dataset)))]
    counts = np.bincount(np.asarray(labels, dtype=np.int64).reshape(-1), minlength=config.model.num_classes)
    return counts, [c for c in range(config.model.num_classes) if counts[c] == 0]


def check_training_classes(config: TrainConfig, train_set: Dataset) -> None:
    """ValueError unless the training set holds an image of every class: trained on one class a
    classifier learns nothing of the others (a folder of label 0 alone trained to exit 0, train
    accuracy 0: ca_rev125).  The user's data (folder, BraTS) only: a synthetic set draws both
    classes, and counting them would render every training image (12 s at 2,000)."""
    if config.data not in ("folder", "brats"):
        return
    counts, absent = _class_counts(config, train_set)
    if absent:
        fix = "add images of every class to the training data" + (" (root/train)" if config.data == "folder" else "")
        raise ValueError(f"the training set ({len(cast(Sized, train_set))} images) holds no image of class "
                         f"{', '.join(map(str, absent))} (per class: {', '.join(map(str, counts.tolist()))}); {fix}")


class ValidationClassesError(ValueError):
    """A validation set without an image of every class (:func:`check_validation_classes`)."""


def check_validation_classes(config: TrainConfig, val_set: Dataset) -> None:
    """ValueError unless the validation set holds an image of every class: without one, its
    ROC AUC (which picks ``best.pt``) and balanced accuracy are undefined, and every epoch
    would be reported, and selected, on no criterion."""
    counts, absent = _class_counts(config, val_set)
    if absent:
        fix = ("raise --n-val or change --data-seed" if config.data not in ("brats", "folder") else
               "add images of every class to the validation data" + (" (root/val)" if config.data == "folder" else
                                                                     " (or raise --val-fraction)"))
        n = len(cast(Sized, val_set))
        raise ValidationClassesError(f"the validation set ({n} image{'s' if n != 1 else ''}) holds no image of class "
                         f"{', '.join(map(str, absent))} (per class: {', '.join(map(str, counts.tolist()))}): its "
                         f"ROC AUC, which picks best.pt, and its balanced accuracy are undefined; {fix}")


def check_data(config: TrainConfig, train_set: Dataset, val_set: Dataset) -> None:
    """ValueError unless both datasets hold images of the model's channels and size."""
    n_train, n_val = len(cast(Sized, train_set)), len(cast(Sized, val_set))  # (every dataset here has a length)
    if n_train == 0 or n_val == 0:
        raise ValueError(f"empty dataset: {n_train} training and {n_val} validation images")
    first = train_set[0][0]
    if first.shape[0] != config.model.in_channels:
        raise ValueError(f"the data has {first.shape[0]} channels but the model expects {config.model.in_channels} "
                         f"(--channels)")
    size = config.model.image_size
    if tuple(first.shape[1:]) != (size, size):
        raise ValueError(f"the data's images are {first.shape[1]}x{first.shape[2]} but the model is built for "
                         f"{size}x{size} (--image-size)")


def _non_finite_optimizer_state(optimizer) -> str:
    """The optimiser-state entries (``"parameter 3 exp_avg"``) that hold NaN or Inf, named
    (at most three); empty when all are finite or there is no state."""
    bad = []
    per_param = optimizer.get("state", {}) if isinstance(optimizer, dict) else {}
    for key, entry in per_param.items() if isinstance(per_param, dict) else ():
        for name, value in entry.items() if isinstance(entry, dict) else ():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(f"parameter {key} {name}")
    return ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")


#: Adam's settings that decide what its state means and what its next step does, as training
#: builds it; a checkpoint's must be these (lr and weight_decay are the resumed run's own to
#: set).  Its other keys (foreach, fused, capturable, differentiable) choose an implementation
#: and are training's own when it resumes (:meth:`_Run.restore`).
ADAM_KEEPS = ("betas", "eps", "amsgrad", "maximize", "decoupled_weight_decay")


def _training_adam(config: TrainConfig) -> dict:
    """The settings of the Adam that :class:`_Run` builds (one parameter group's)."""
    return dict(torch.optim.Adam([torch.zeros(1)], lr=config.lr, weight_decay=config.weight_decay).defaults)


def _other_adam(optimizer, config: TrainConfig) -> str:
    """The :data:`ADAM_KEEPS` settings of a checkpoint's optimiser state that are not
    training's, named (``"maximize: checkpoint True vs training's False"``); empty where
    there are none, where the state records none (older torch), or there is no state.  A
    resume had taken them silently (gradient ascent under ``maximize``) or failed after the
    work started (``amsgrad``: a KeyError from Adam's first step: ca_rev197)."""
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    ours = _training_adam(config)
    diff = []
    for group in groups if isinstance(groups, list) else ():
        for key in ADAM_KEEPS:
            if isinstance(group, dict) and key in group and key in ours:
                theirs, mine = group[key], ours[key]
                if key == "betas":
                    theirs, mine = tuple(theirs), tuple(mine)  # (a list after a round trip through JSON)
                if theirs != mine:
                    diff.append(f"{key}: checkpoint {group[key]!r} vs training's {ours[key]!r}")
    return ", ".join(dict.fromkeys(diff))


def _rng_problem(rng) -> str:
    """What is wrong with a checkpoint's stored random states (:meth:`_Run._rng_state`), in
    words; empty when they are usable or absent (older checkpoints)."""
    if rng is None:
        return ""
    if not isinstance(rng, dict) or type(rng.get("world")) is not int:
        return "not a dict with the number of processes"
    for key in ("torch", "aug", *(("loader",) if "loader" in rng else ())):  # the loader's: where it shuffles
        try:  # a CPU generator's state, as torch's global one: set on a scratch generator to check it
            torch.Generator().set_state(rng[key])
        except (KeyError, TypeError, RuntimeError, ValueError):
            return f"{key!r} is not the state of a CPU random generator"
    cuda = rng.get("cuda", [])
    if not isinstance(cuda, list) or not all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda):
        return "'cuda' is not a list of generator states"
    return ""


#: The model settings outside its architecture that a resumed run keeps (they decide what its
#: earlier epochs computed).
RESUME_KEEPS = ("temperature", "alpha", "solver_options")


def check_resume(config: TrainConfig, state: dict) -> int:
    """The first epoch to train after ``state``; ValueError for a checkpoint that does not
    fit ``config``, whose optimiser state is not all finite, or has nothing left to do."""
    stored = ModelConfig.from_dict(state["config"])
    theirs = stored.architecture()
    mine = config.model.architecture()
    diff = [f"{k}: checkpoint {theirs[k]!r} vs asked {mine[k]!r}" for k in mine if mine[k] != theirs[k]]
    if diff:
        raise ValueError(f"checkpoint {config.resume!r} is of another architecture ({', '.join(diff)}); resume "
                         f"without changing these, or train a new model into another --out")
    # the model's other settings decide its computation too: its earlier epochs trained, and
    # best.pt is chosen among them, at the checkpoint's (a review: a resumed run took another
    # temperature silently, and recorded only the new one)
    def kept(model: ModelConfig, k: str):  # the temperature as every level gets it: (1.0,) is (1.0, 1.0)
        return model.temperature_per_level() if k == "temperature" else getattr(model, k)

    diff = [f"{k}: checkpoint {kept(stored, k)!r} vs asked {kept(config.model, k)!r}"
            for k in RESUME_KEEPS if kept(stored, k) != kept(config.model, k)]
    stored_train = state.get("train_config")
    seed = stored_train.get("seed") if isinstance(stored_train, dict) else None
    if isinstance(seed, int) and seed != config.seed:  # the library's path too, not the command's alone
        diff.append(f"seed: checkpoint {seed!r} vs asked {config.seed!r} (the resumed run draws from the "
                    f"checkpoint's random state; its weights came from that seed)")
    if isinstance(stored_train, dict):  # the data, as the command checks it (its epochs' validation scores pick
        try:  # best.pt on one validation set: the library's path had taken another silently, ca_rev173)
            trained_on = TrainConfig.from_dict(stored_train).data_config()
        except (ConfigError, TypeError, ValueError):
            trained_on = None  # a record this version cannot read: the command's own checks say so
        if trained_on is not None:
            asked = config.data_config()
            diff += [f"{k}: checkpoint {trained_on.get(k)!r} vs asked {asked.get(k)!r} (its validation images)"
                     for k in TrainConfig.data_differences(trained_on, asked)]
    if diff:
        raise ValueError(f"checkpoint {config.resume!r} was trained with other settings ({', '.join(diff)}); "
                         f"a resumed run keeps them: resume without changing these, or train a new model into "
                         f"another --out")
    bad = _non_finite_optimizer_state(state.get("optimizer"))
    if bad:
        raise ValueError(f"checkpoint {config.resume!r} holds an optimiser state that is not all finite ({bad}): "
                         f"the next updates would not be finite, or would be none (an infinite second moment "
                         f"freezes its weight); resume from a checkpoint of an earlier epoch, or train a new model "
                         f"into another --out")
    other = _other_adam(state.get("optimizer"), config)
    if other:
        raise ValueError(f"checkpoint {config.resume!r} holds the state of another optimiser than training's Adam "
                         f"({other}): resumed, its moments would be read under settings training never used; "
                         f"resume from a checkpoint this tool wrote, or train a new model into another --out")
    rng_problem = _rng_problem(state.get("rng"))
    if rng_problem:
        raise ValueError(f"checkpoint {config.resume!r} holds a damaged random state ({rng_problem}); resume from "
                         f"another checkpoint, or train a new model into another --out")
    done = int(state["epoch"])
    if done >= config.epochs:
        raise ValueError(f"checkpoint {config.resume!r} is at epoch {done} and the run asks for {config.epochs} "
                         f"epochs: nothing to do; pass --epochs greater than {done} to train further")
    return done + 1


# ---------------------------------------------------------------------------- training

def train(config: TrainConfig, datasets: tuple[Dataset, Dataset] | None = None, log=None,
          model_class=None, resume_state: dict | None = None, data_split: dict | None = None) -> dict:
    """Train; returns ``{"metrics": rows, "best": path, "last": path, "best_epoch": int, "model": model}``.

    The configuration (and a checkpoint to resume from) is checked before any work.
    ``datasets``: ``(train, val)``, checked here unless they are :class:`CheckedData`
    (checked where they entered); ``None`` builds the configuration's data.
    ``resume_state``: the checkpoint ``config.resume`` names, already read
    (:func:`~convex_attention.paper.models.read_checkpoint`: the command reads it once); ValueError without
    ``config.resume``.
    ``log``: where the per-epoch lines go (default: ``print`` when ``config.progress``).
    ``model_class``: built as ``model_class(config=config.model)`` instead of
    :class:`AttentionUNet` (e.g. the plain CNN baseline, trained by the same loop).
    ``data_split``: what ``datasets`` are where the configuration's data settings do not
    rebuild them (the experiment's protocol splits): the checkpoints record it, and a run
    that would rebuild their data from the configuration (``train --resume``, ``explain``)
    refuses them (:func:`data_not_rebuilt`).
    """
    config.validate()
    if resume_state is not None and config.resume is None:  # (was a TypeError after the run began: ca_rev290)
        raise ValueError("resume_state is the checkpoint config.resume names: set config.resume to its path")
    if config.resume and resume_state is None:
        resume_state = read_checkpoint(config.resume)
    if resume_state is not None and datasets is None and (why := data_not_rebuilt(resume_state)) is not None:
        raise ValueError(f"{config.resume}: {why}")
    if resume_state is not None and resume_state.get("data_split") is not None:
        # its checkpoints go on saying what it was trained on (else a resume with its splits handed
        # in wrote checkpoints that train --resume and explain accepted: ca_rev139)
        if data_split is not None and data_split != resume_state["data_split"]:
            raise ValueError(f"{config.resume}: the checkpoint was trained on {resume_state['data_split']}, "
                             f"not {data_split}")
        data_split = resume_state["data_split"]
    start_epoch = check_resume(config, resume_state) if resume_state is not None else 1
    agreeing = bool(config.resume) and _distributed()[0] > 1  # the ranks start their group here
    if agreeing:
        assert resume_state is not None  # config.resume names it: read above
        config, resume_state, start_epoch, datasets = _agree_on_the_resume(config, resume_state, start_epoch,
                                                                           datasets)
    try:
        if datasets is None:
            datasets = build_checked_datasets(config)
        elif not isinstance(datasets, CheckedData):
            check_data(config, *datasets)
        check_no_batch_of_one(config, datasets, _distributed()[0])
    except BaseException:
        if agreeing and dist.is_initialized():
            _destroy_process_group()  # started by _agree_on_the_resume: closed as _Run.close_group would
        raise
    run = _Run(config, CheckedData(*datasets), model_class, log, data_split)
    try:
        if resume_state is not None:
            run.restore(resume_state)
        for epoch in range(start_epoch, config.epochs + 1):
            run.epoch(epoch)
    except BaseException:
        # a failed rank still closes its group, so that the error is the command's only
        # output (torch warns of a group left open at exit) and no Gloo thread outlives
        # the run into the interpreter's shutdown (see _init_process_group)
        run.close_group()
        raise
    run.finish()
    return {"metrics": run.metrics, "best": run.best_path, "last": run.last_path, "best_epoch": run.best_epoch,
            "model": run.model}


def check_no_batch_of_one(config: TrainConfig, datasets, world: int) -> None:
    """No rank trains on a batch of one image where the model's BatchNorm sees a 1×1 map
    (:func:`~convex_attention.paper.config.batchnorm_of_one_value`; only there are the training
    images, ``datasets[0]``, counted: the command's tests stub the datasets).  The configuration
    refuses ``n_train`` 1 and ``batch_size`` 1; here the training set is known, and so is the world size:
    ``n_train`` images over ``world`` ranks, with no more than ``batch_size × world`` of them, are
    one batch of ``ceil(n_train / world)`` images per rank (the DistributedSampler pads, nothing is
    dropped), one image where ``n_train ≤ world``: every rank had ended in torch's BatchNorm
    traceback in its first step."""
    if not batchnorm_of_one_value(config.model):
        return
    n_train = len(cast(Sized, datasets[0]))
    if n_train <= world:
        raise ConfigError("n_train", f"{n_train} training image(s) over {world} rank(s) give each rank batches of "
                                     f"one image, and {batchnorm_of_one_reason(config.model)}; use more than {world} "
                                     f"training image(s), norm group, or a larger image size")


def _agree_on_the_resume(config: TrainConfig, resume_state: dict, start_epoch: int, datasets):
    """Under torchrun, every rank takes rank 0's configuration and checkpoint: ``(config,
    resume_state, start_epoch, datasets)``.

    Rank 0 holds ``--out``'s lock (``convex-attention train``) and read the checkpoint and
    the settings it stores under it; the other ranks read them on arrival.  A run that held
    the folder meanwhile (``--wait``) may have written a newer checkpoint, with other
    settings: ranks resuming different epochs hung each other, and ranks with different
    learning rates trained different models without a word (found by two reviews).  So the
    process group starts here, rank 0 broadcasts its configuration, and the other ranks read
    the checkpoint again (and rebuild their data if the settings differ)."""
    world, rank, local_rank = _distributed()
    backend = _backend(config)
    if not dist.is_initialized():
        _init_process_group(backend)
    try:
        if backend == "nccl":
            torch.cuda.set_device(_device(config, local_rank))
        agreed = [config]
        dist.broadcast_object_list(agreed, src=0)
        if rank != 0:
            if agreed[0] != config:
                datasets = None  # built from the settings this rank read on arrival
            config = agreed[0]
            assert config.resume is not None  # rank 0's: it agrees only on a resume (train's `agreeing`)
            resume_state = read_checkpoint(config.resume)
            start_epoch = check_resume(config, resume_state)
    except BaseException:
        _destroy_process_group()  # a failed rank closes its group, as _Run.close_group
        raise
    return config, resume_state, start_epoch, datasets


class _Run:
    """One training run on one rank: its model, optimiser, data loader and selection state."""

    def __init__(self, config: TrainConfig, data: CheckedData, model_class, log, data_split: dict | None = None):
        self.config = config
        self.data_split = data_split
        self.log = log if log is not None else (print if config.progress else (lambda *a, **k: None))
        self.world, self.rank, local_rank = _distributed()
        # a rank ends with its launcher, torchrun (which names its run in every rank's environment), killed or not;
        # a rank started by hand or by another launcher (env://, nohup) is left to run when its parent ends
        if self.world > 1 and os.environ.get("TORCHELASTIC_RUN_ID"):
            watch_launcher()
        if self.world > 1 and not dist.is_initialized():
            _init_process_group(_backend(config))
        try:
            self._build(config, data, model_class, local_rank)
        except BaseException:
            self.close_group()
            raise

    def _build(self, config: TrainConfig, data: CheckedData, model_class, local_rank: int) -> None:
        self.device = _device(config, local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        seed_everything(config.seed)
        self.main = self.rank == 0
        self.val_set = data.val
        self.model = (model_class or AttentionUNet)(config=config.model).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        if self.main:
            os.makedirs(config.out, exist_ok=True)
        self.metrics: list[dict] = []
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.updated = False  # an optimiser step was taken (here or before the checkpoint resumed from)
        self.net = self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.train_labels = labels_only(data.train)  # masks never reach training
        self.sampler: torch.utils.data.DistributedSampler | None = torch.utils.data.DistributedSampler(
            self.train_labels, self.world, self.rank, shuffle=True, seed=config.seed) if self.world > 1 else None
        loader_gen = torch.Generator().manual_seed(config.seed)
        self.loader = DataLoader(self.train_labels, batch_size=config.batch_size, shuffle=self.sampler is None,
                                 sampler=self.sampler, num_workers=config.workers,
                                 drop_last=len(self.train_labels) > config.batch_size * self.world,
                                 generator=loader_gen if self.sampler is None else None)
        self.aug_gen = torch.Generator().manual_seed(config.seed * 7919 + self.rank)
        if self.main:
            write_json(os.path.join(config.out, "config.json"), config.flat())
        self.best_path, self.last_path = os.path.join(config.out, "best.pt"), os.path.join(config.out, "last.pt")

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint: its weights and optimiser, metrics and selection."""
        config = self.config
        assert config.resume is not None  # train() refuses a resume_state without config.resume
        load_checkpoint(config.resume, self.model, self.optimizer, map_location=self.device, state=state)
        self.updated = True
        # the learning rate asked now, not the checkpoint's; the implementation's own keys (foreach,
        # fused, capturable: an AssertionError on CPU) training's too (the settings of ADAM_KEEPS were
        # checked to be training's by check_resume)
        ours = _training_adam(config)
        for group in self.optimizer.param_groups:
            group.update({k: v for k, v in ours.items() if k not in ADAM_KEEPS})
        self.metrics = list(state.get("metrics", []))
        # the selection goes on where it stopped: best.pt holds the epoch of highest AUC so far
        aucs = {int(m["epoch"]): float(m["val_auc"]) for m in self.metrics
                if isinstance(m.get("val_auc"), float) and math.isfinite(m["val_auc"])}
        self.best_epoch = state.get("best_epoch")
        if self.best_epoch not in aucs and aucs:
            self.best_epoch = max(aucs, key=lambda e: (aucs[e], -e))
        if self.best_epoch in aucs:
            self.best = aucs[self.best_epoch]
        elif self.best_epoch is not None:  # no finite AUC so far: the first epoch stays best, as uninterrupted
            self.best = -math.inf  # (None let the next epoch take it: ca_rev173)
        self._restore_rng(state)
        if self.main and self.best_epoch is not None:
            self._reconcile_best(state)

    def _rng_state(self) -> dict:
        """The random states the next epoch draws from (the loader's shuffle, the augmentations,
        torch's global generator and CUDA's): stored in every checkpoint, so a resumed run
        draws what an uninterrupted one would."""
        rng = {"world": self.world, "torch": torch.get_rng_state(), "aug": self.aug_gen.get_state()}
        if self.loader.generator is not None:
            rng["loader"] = self.loader.generator.get_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = list(torch.cuda.get_rng_state_all())
        return rng

    def _restore_rng(self, state: dict) -> None:
        """The random states stored with the checkpoint (:meth:`_rng_state`, checked by
        :func:`check_resume`); a checkpoint without them (older ones) resumes with the
        generators seeded anew, and the log says that the order differs."""
        rng = state.get("rng")
        if not isinstance(rng, dict) or rng.get("world") != self.world or self.world > 1:
            why = ("it stores no random state (an older checkpoint)" if not isinstance(rng, dict) else
                   "it was saved by another number of processes" if rng.get("world") != self.world else
                   "under DistributedDataParallel only rank 0's state is stored")
            self.log(f"[{self.config.method}] resume: {why}: the shuffling and augmentations of the resumed epochs "
                     f"are seeded anew, so they differ from those of an uninterrupted run of seed {self.config.seed}")
            return
        torch.set_rng_state(rng["torch"])
        self.aug_gen.set_state(rng["aug"])
        if self.loader.generator is not None and "loader" in rng:
            self.loader.generator.set_state(rng["loader"])
        if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def _reconcile_best(self, state: dict) -> None:
        """``best.pt`` here must be the checkpoint of the selection's best epoch.  Absent (resumed
        into another ``--out``), or left by an interrupted run at an epoch that the resumed run
        does not hold as its best (e.g. written just before ``last.pt`` of the same epoch, which
        the resumed run then trains again): the right one is carried in (:meth:`_carry_best`).
        A ``best.pt`` that is not a checkpoint of this run is never replaced."""
        if not os.path.exists(self.best_path):
            self._carry_best(state)
            return
        try:
            here = read_checkpoint(self.best_path)
            epoch = int(here["epoch"])
            same_run = same_history(here["metrics"], state.get("metrics", [])) is True
        except (OSError, ValueError, KeyError, TypeError):
            return  # not a checkpoint of a training run: the user's file, left alone
        if not same_run or (epoch == self.best_epoch and epoch <= int(state["epoch"])):
            return
        self.log(f"[{self.config.method}] best.pt holds epoch {epoch}, not the best epoch so far ({self.best_epoch}) "
                 f"of the checkpoint resumed from (the run was interrupted between writing best.pt and last.pt)")
        if self._carry_best(state):
            self.log(f"[{self.config.method}] best.pt: replaced by the checkpoint of epoch {self.best_epoch}")
        else:  # a checkpoint of an epoch that is trained again, or of no selected one: it would be wrong
            os.remove(self.best_path)

    def _carry_best(self, state: dict) -> bool:
        """Resumed into another folder (``--out``), which has no ``best.pt``: the best epoch's
        checkpoint comes along (the resumed one, or the ``best.pt`` beside it, whichever is of
        that epoch), so ``best.pt`` here is the epoch the selection holds; otherwise the log
        says where that epoch's checkpoint is."""
        resume = self.config.resume
        assert resume is not None  # restored: train() refuses a resume_state without config.resume
        beside = os.path.join(os.path.dirname(os.path.abspath(resume)), "best.pt")
        for path in (resume, beside):
            try:
                of_best = int((state if path == resume else read_checkpoint(path))["epoch"]) \
                    == self.best_epoch
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if of_best:  # copied atomically, as every checkpoint is written: never a truncated best.pt
                with open(path, "rb") as f:
                    atomic_write_bytes(self.best_path, f.read())
                return True
        self.log(f"[{self.config.method}] best.pt: no checkpoint of the best epoch so far ({self.best_epoch}) was "
                 f"found to copy into {self.config.out}; best.pt is written there when a later epoch has a higher "
                 f"validation AUC")
        return False

    def epoch(self, epoch: int) -> None:
        """Train one epoch, then (rank 0) recompute BatchNorm, evaluate, checkpoint and log."""
        from tqdm.auto import tqdm

        config, model = self.config, self.model
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        total, correct, loss_sum = 0, 0, 0.0
        bar = tqdm(self.loader, desc=f"{config.method} epoch {epoch}/{config.epochs}", leave=False,
                   dynamic_ncols=True, disable=not (self.main and config.progress))
        for step, (images, labels) in enumerate(bar):
            images, labels = images.to(self.device), labels.to(self.device)
            if config.augment:
                images = augment(images, self.aug_gen)
            out = self.net(images)
            loss = model.loss(out, labels)
            if not torch.isfinite(loss):
                raise diagnose_divergence(model, images, out, loss, f"at epoch {epoch}, step {step + 1} (method "
                                          f"{config.method})", self.updated, config.lr)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.updated = True
            n = len(labels)
            total += n
            loss_sum += float(loss.detach()) * n
            correct += int((out.logits.argmax(1) == labels).sum())
            bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
        bar.close()
        epoch_time = time.perf_counter() - t0
        bad = _non_finite_optimizer_state(self.optimizer.state_dict())
        if bad:  # a finite loss and finite gradients whose squares overflowed: from here on, those weights
            # take no update, and the last.pt it would write is refused by --resume (ca_rev197)
            raise TrainingDiverged(f"the optimiser's state became NaN or Inf at epoch {epoch} (method "
                                   f"{config.method}; {bad}) while the loss stayed finite: gradients too large for "
                                   f"Adam's second moment", True, config.lr)
        if self.main and config.recompute_bn:
            recompute_batchnorm(model, self.train_labels, config.batch_size, self.device)
        if self.world > 1:
            # DDP keeps parameters in step through the gradient all-reduce; BatchNorm
            # statistics (recomputed on rank 0, or each rank's running average) are made
            # rank 0's on every rank, as DDP's own buffer broadcast would.
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)
        if self.main:
            try:
                measured = evaluate(model, self.val_set, device=self.device)
            except NonFiniteOutput as err:  # the training loss stayed finite; the validation outputs did not
                raise TrainingDiverged(f"after epoch {epoch} (method {config.method}) {err} (the validation images; "
                                       f"the training loss stayed finite)", True, config.lr) from None
            self._record(epoch, {"epoch": epoch, "train_loss": loss_sum / total, "train_acc": correct / total,
                                 **measured, "epoch_time_s": epoch_time, "lr": config.lr})
        if self.world > 1:
            dist.barrier()

    def _record(self, epoch: int, row: dict) -> None:
        """metrics.csv, best.pt (by validation AUC) and last.pt, and the epoch's log line."""
        config = self.config
        self.metrics.append(row)
        rng = self._rng_state()  # before anything else draws: what the next epoch starts from
        atomic_csv(os.path.join(config.out, "metrics.csv"), METRIC_COLUMNS, self.metrics)
        auc = row["val_auc"]
        if self.best is None or (math.isfinite(auc) and auc > self.best):
            self.best, self.best_epoch = (auc if math.isfinite(auc) else -math.inf), epoch
            save_checkpoint(self.best_path, self.model, self.optimizer, epoch, self.metrics,
                            extra=_extra(config, row, self.best_epoch, rng, self.data_split))
        save_checkpoint(self.last_path, self.model, self.optimizer, epoch, self.metrics,
                        extra=_extra(config, row, self.best_epoch, rng, self.data_split))
        self.log(f"[{config.method}] epoch {epoch}: loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} | "
                 # (the second number is a balanced accuracy, not the threshold: ca_rev272 read it as one)
                 f"val auc {auc:.3f} bal.acc {row['val_balanced_acc']:.3f} argmax, "
                 f"{row['val_balanced_acc_at_threshold']:.3f} at threshold {row['val_threshold']:.3f} "
                 f"violation {row['val_violation']:.2e} "
                 f"({row['epoch_time_s']:.1f} s)")

    def finish(self) -> None:
        """Under DDP: every rank's weight digest (``ddp_check.json``), then the group is closed."""
        if self.world <= 1:
            return
        digests: list = [None] * self.world
        dist.all_gather_object(digests, (weights_digest(self.model), weights_digest(self.model, buffers=False)))
        if self.main:
            write_json(os.path.join(self.config.out, "ddp_check.json"),
                       {"world_size": self.world, "digests": [d[0] for d in digests],
                        "parameter_digests": [d[1] for d in digests], "identical": len({d[0] for d in digests}) == 1})
        dist.barrier()
        # The DDP wrapper goes first, while the group is still registered. Its reducer holds
        # the group, and freed after destroy_process_group it is the group's last owner: the
        # group's destructor then joins Gloo's worker threads with the GIL held, and a worker
        # still dropping a finished collective (the barrier holds the all-gather's tensors,
        # whose Python objects need the GIL) waits for it forever. Freed last by the group's
        # own Python object (its backend's, on torch 2.7.1: _destroy_process_group), the
        # destructor runs without the GIL.
        self.close_group()

    def close_group(self) -> None:
        """Free the DDP wrapper, then destroy the process group (no collective: a failed rank
        calls this alone).  Nothing to do on one process or when the group is gone."""
        if self.world <= 1 or not dist.is_initialized():
            return
        if hasattr(self, "net"):  # absent when building the run failed before the wrapper
            wrapper = weakref.ref(self.net)
            self.net = self.model
            if wrapper() is not None:  # held by a reference cycle (torch 2.13 frees it at once)
                gc.collect()
        _destroy_process_group()


def _extra(config: TrainConfig, row: dict, best_epoch, rng: dict | None = None, data_split: dict | None = None) -> dict:
    """What a training checkpoint stores beyond the weights: the whole configuration, the
    selected epoch, the decision threshold chosen on validation and the random states the
    next epoch starts from (``rng``: so ``--resume`` continues as an uninterrupted run), and
    the split it was trained on where the configuration does not rebuild it (``data_split``)."""
    extra = {"train_config": config.to_dict(), "best_epoch": best_epoch, "threshold": row["val_threshold"],
             "threshold_log_odds": row.get("val_threshold_log_odds", math.nan)}
    if rng is not None:
        extra["rng"] = rng
    if data_split is not None:
        extra["data_split"] = data_split
    return extra


def data_not_rebuilt(state: dict) -> str | None:
    """Why a checkpoint's data cannot be rebuilt from its training configuration (None when
    they can): a model trained on data handed to :func:`train` with a ``data_split`` (the
    experiment's protocol splits) records it, and its configuration's data settings would
    rebuild other images (a resume would select its best epoch across two validation sets;
    explain would score images that are not its validation split: ca_rev137)."""
    split = state.get("data_split")
    if split is None:
        return None
    what = ", ".join(f"{k} {v}" for k, v in split.items()) if isinstance(split, dict) else str(split)
    return (f"the model was trained on splits its training configuration does not rebuild ({what[:200]}): "
            f"continuing or explaining it here would use other images; the experiment scores its own models")
