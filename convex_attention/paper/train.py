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
``val_balanced_acc_at_threshold``.

Configuration: :class:`TrainConfig` holds the :class:`ModelConfig` (``config.model``) and
is stored whole in every checkpoint, so ``--resume CKPT`` needs no other flag.

Multi-machine: the same code runs under ``torchrun`` with DistributedDataParallel (gloo on
CPU, nccl on GPU), a DistributedSampler, and logging and checkpoints on rank 0 only.  At
the end every rank hashes its weights; rank 0 writes ``ddp_check.json``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..bench.results import atomic_csv, write_json
from .data import DATA_SOURCES, build_datasets, labels_only
from .models import AttentionUNet, ConfigError, ModelConfig, load_checkpoint, read_checkpoint, save_checkpoint
from .models.unet import check_int, check_real

__all__ = ["TrainConfig", "train", "evaluate", "augment", "classification_metrics", "check_device",
           "recompute_batchnorm", "stored_train_config", "build_checked_datasets", "check_data", "check_resume",
           "TrainingDiverged", "METRIC_COLUMNS"]

METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc", "val_violation",
                  "epoch_time_s", "lr", "val_auc", "val_threshold", "val_balanced_acc_at_threshold")

_MODEL_FIELDS = tuple(ModelConfig.__dataclass_fields__)
_ALIASES = {"channels": "in_channels"}  # the data's word for the model's input channels


def check_device(name) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, available on this machine; ConfigError otherwise."""
    accepted = "auto, cpu, cuda, cuda:N or mps"
    if not isinstance(name, str) or not name:
        raise ConfigError("device", f"device must be one of {accepted}, got {name!r}")
    if name == "auto":
        return name
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError("device", f"unknown device {name!r}; use {accepted}") from None
    if dev.type == "cpu":
        return name
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device", f"device {name!r} asked for, but CUDA is not available here (no GPU, or "
                                        f"torch built without CUDA); use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError("device", f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA "
                                        f"device(s) here (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
        return name
    if dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError("device", f"device {name!r} asked for, but MPS is not available here; use cpu or auto")
        return name
    raise ConfigError("device", f"unsupported device {name!r}; use {accepted}")


@dataclass
class TrainConfig:
    """Everything a training run needs; ``model`` is the network's :class:`ModelConfig`.

    Data: ``data`` (a source of :func:`convex_attention.paper.data.build_datasets`),
    ``data_root``, ``n_train``/``n_val`` (synthetic images), ``difficulty``,
    ``data_seed`` (the data's seed; ``None``: ``seed``).  The images' size and channels
    are the model's (``model.image_size``, ``model.in_channels``).

    ``TrainConfig.build(method="exact", width=16, epochs=3)`` takes the fields of both
    levels by name (``channels`` is ``in_channels``).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    out: str = "runs/model"
    data: str = "synthetic"
    data_root: str | None = None
    n_train: int = 2000
    n_val: int = 500
    difficulty: float = 0.5
    data_seed: int | None = None
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    augment: bool = True
    recompute_bn: bool = True
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    resume: str | None = None
    progress: bool = True

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, **fields_) -> TrainConfig:
        """A config from the fields of ``TrainConfig`` and ``ModelConfig`` by name."""
        return cls().override(**fields_)

    def override(self, **fields_) -> TrainConfig:
        """A copy with fields replaced; model fields (and ``channels``) go into ``model``."""
        fields_ = {_ALIASES.get(k, k): v for k, v in fields_.items()}
        mine = {f.name for f in fields(self)}
        model = {k: v for k, v in fields_.items() if k in _MODEL_FIELDS}
        unknown = sorted(set(fields_) - mine - set(model))
        if unknown:
            raise TypeError(f"unknown configuration field(s) {unknown}")
        rest = {k: v for k, v in fields_.items() if k not in model}
        base = rest.pop("model", self.model)
        return replace(self, model=replace(base, **model) if model else base, **rest)

    # ------------------------------------------------------------------ views
    @property
    def method(self) -> str:
        return self.model.method

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @property
    def channels(self) -> int:
        return self.model.in_channels

    def data_config(self) -> dict:
        """What decides the validation images (what ``explain`` compares between checkpoints).
        ``n_train`` is not part of it: every training set of one source and seed is disjoint
        from its validation images."""
        return {"data": self.data, "data_root": self.data_root, "image_size": self.model.image_size,
                "channels": self.model.in_channels, "n_val": self.n_val, "difficulty": self.difficulty,
                "data_seed": self.seed if self.data_seed is None else self.data_seed}

    def to_dict(self) -> dict:
        """Plain containers, the model's fields nested under ``model`` (what checkpoints store)."""
        out = asdict(self)
        out["model"] = self.model.to_dict()
        return out

    def flat(self) -> dict:
        """One key per field of either level (what ``config.json`` holds: one key per option)."""
        out = self.to_dict()
        return {**out.pop("model"), **out}

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict` and :meth:`flat` (and of older flat ``config.json`` files,
        with ``channels``); ConfigError for an unknown field."""
        if not isinstance(data, dict):
            raise ConfigError("train_config", f"a training configuration must be a dict, got {type(data).__name__}")
        data = dict(data)
        model = data.pop("model", None) or {}
        if not isinstance(model, dict):
            raise ConfigError("model", f"the model configuration must be a dict, got {type(model).__name__}")
        data = {_ALIASES.get(k, k): v for k, v in data.items()}
        model = {**model, **{k: data.pop(k) for k in list(data) if k in _MODEL_FIELDS}}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown training configuration field(s) {unknown}")
        return cls(model=ModelConfig.from_dict(model), **data)

    # ------------------------------------------------------------------ checks
    def validate(self) -> TrainConfig:
        """Check every field of both levels (ConfigError, a ValueError, naming the field and
        the accepted values).  The device must exist on this machine."""
        if not isinstance(self.model, ModelConfig):
            raise ConfigError("model", f"model must be a ModelConfig, got {type(self.model).__name__}")
        self.model.validate()
        if not isinstance(self.out, str) or not self.out:
            raise ConfigError("out", f"out must be a folder name, got {self.out!r}")
        if self.data not in DATA_SOURCES:
            raise ConfigError("data", f"unknown data source {self.data!r}; choose one of {', '.join(DATA_SOURCES)}")
        if self.data_root is not None and not isinstance(self.data_root, str):
            raise ConfigError("data_root", f"data_root must be a folder name, got {self.data_root!r}")
        check_int("n_train", self.n_train, 1, " (at least one image)")
        check_int("n_val", self.n_val, 1, " (at least one image)")
        check_real("difficulty", self.difficulty, 0.0, 1.0)
        if self.data_seed is not None:
            check_int("data_seed", self.data_seed, 0)
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_real("lr", self.lr, 0.0, low_open=True)
        check_real("weight_decay", self.weight_decay, 0.0)
        for name in ("augment", "recompute_bn", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"{name} must be True or False, got {getattr(self, name)!r}")
        check_int("seed", self.seed, 0)
        check_int("workers", self.workers, 0)
        check_device(self.device)
        if self.resume is not None and not isinstance(self.resume, str):
            raise ConfigError("resume", f"resume must be a checkpoint path, got {self.resume!r}")
        return self


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
        with open(cfg_path) as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"{cfg_path!r} beside the checkpoint is not readable JSON ({err})") from None
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
    """Mean per-class recall over the classes present."""
    recalls = [float((pred[target == c] == c).float().mean()) for c in range(num_classes) if (target == c).any()]
    return float(np.mean(recalls)) if recalls else float("nan")


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


def _device(config: TrainConfig, local_rank: int) -> torch.device:
    if config.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(config.device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def classification_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict:
    """Accuracy, balanced accuracy (argmax), ROC AUC and the balanced accuracy at the
    threshold chosen on these data, from ``logits`` ``(N, C)`` and ``target`` ``(N,)``.

    Two classes: AUC of p(class 1) (scikit-learn's ``roc_auc_score``); the threshold on
    p(class 1) maximises balanced accuracy, i.e. Youden's J = TPR − FPR on the ROC curve.
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
        "val_balanced_acc_at_threshold": math.nan}
    present = np.unique(y)
    if num_classes == 2 and len(present) == 2:
        p1 = probs[:, 1]
        out["val_auc"] = float(roc_auc_score(y, p1))
        fpr, tpr, thresholds = roc_curve(y, p1)
        finite = np.isfinite(thresholds)
        j = np.where(finite, tpr - fpr, -np.inf)
        threshold = float(thresholds[int(np.argmax(j))])
        out["val_threshold"] = threshold
        out["val_balanced_acc_at_threshold"] = float(balanced_accuracy_score(y, (p1 >= threshold).astype(int)))
    elif num_classes > 2 and len(present) == num_classes:
        out["val_auc"] = float(roc_auc_score(y, probs, multi_class="ovr"))
    return out


@torch.no_grad()
def evaluate(model: AttentionUNet, dataset: Dataset, batch_size: int = 64, device="cpu") -> dict:
    """Loss, accuracy, balanced accuracy, ROC AUC, the chosen threshold and the balanced
    accuracy there (:func:`classification_metrics`), and the mean attention violation on
    ``dataset``, in evaluation mode."""
    model.eval()
    loader = DataLoader(labels_only(dataset), batch_size=batch_size, shuffle=False)
    losses, logits, targets, violations = [], [], [], []
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        out = model(images)
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

    loader = DataLoader(labels_only(dataset), batch_size=batch_size, shuffle=False)
    with torch.no_grad():
        update_bn(loader, model, device=device)
    return True


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: training stopped (the last checkpoints stay)."""


def build_checked_datasets(config: TrainConfig) -> tuple[Dataset, Dataset]:
    """``(train, val)`` of ``config``'s data, checked against the model (channels, size);
    ValueError naming the problem and the option to change."""
    data_seed = config.seed if config.data_seed is None else config.data_seed
    train_set, val_set = build_datasets(config.data, config.data_root, config.model.image_size,
                                        config.model.in_channels, config.n_train, config.n_val, config.difficulty,
                                        data_seed)
    check_data(config, train_set, val_set)
    return train_set, val_set


def check_data(config: TrainConfig, train_set: Dataset, val_set: Dataset) -> None:
    """ValueError unless both datasets hold images of the model's channels and size."""
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"empty dataset: {len(train_set)} training and {len(val_set)} validation images")
    first = train_set[0][0]
    if first.shape[0] != config.model.in_channels:
        raise ValueError(f"the data has {first.shape[0]} channels but the model expects {config.model.in_channels} "
                         f"(--channels)")
    size = config.model.image_size
    if tuple(first.shape[1:]) != (size, size):
        raise ValueError(f"the data's images are {first.shape[1]}x{first.shape[2]} but the model is built for "
                         f"{size}x{size} (--image-size)")


def check_resume(config: TrainConfig, state: dict) -> int:
    """The first epoch to train after ``state``; ValueError for a checkpoint that does not
    fit ``config`` or has nothing left to do."""
    theirs = ModelConfig.from_dict(state["config"]).architecture()
    mine = config.model.architecture()
    diff = [f"{k}: checkpoint {theirs[k]!r} vs asked {mine[k]!r}" for k in mine if mine[k] != theirs[k]]
    if diff:
        raise ValueError(f"checkpoint {config.resume!r} is of another architecture ({', '.join(diff)}); resume "
                         f"without changing these, or train a new model into another --out")
    done = int(state["epoch"])
    if done >= config.epochs:
        raise ValueError(f"checkpoint {config.resume!r} is at epoch {done} and the run asks for {config.epochs} "
                         f"epochs: nothing to do; pass --epochs greater than {done} to train further")
    return done + 1


# ---------------------------------------------------------------------------- training

def train(config: TrainConfig, datasets: tuple[Dataset, Dataset] | None = None, log=None,
          model_class=None) -> dict:
    """Train; returns ``{"metrics": rows, "best": path, "last": path, "best_epoch": int, "model": model}``.

    The configuration (and a checkpoint to resume from) is checked before any work.
    ``log``: where the per-epoch lines go (default: ``print`` when ``config.progress``).
    ``model_class``: built as ``model_class(config=config.model)`` instead of
    :class:`AttentionUNet` (e.g. the plain CNN baseline, trained by the same loop).
    """
    from tqdm.auto import tqdm

    config.validate()
    if log is None:
        log = print if config.progress else (lambda *a, **k: None)
    resume_state = read_checkpoint(config.resume) if config.resume else None
    start_epoch = check_resume(config, resume_state) if resume_state is not None else 1
    world, rank, local_rank = _distributed()
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if (torch.cuda.is_available() and config.device != "cpu") else "gloo"
        dist.init_process_group(backend=backend)
    device = _device(config, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seed_everything(config.seed)
    main = rank == 0
    if datasets is None:
        train_set, val_set = build_checked_datasets(config)
    else:
        train_set, val_set = datasets
        check_data(config, train_set, val_set)
    model = (model_class or AttentionUNet)(config=config.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if main:
        os.makedirs(config.out, exist_ok=True)
    metrics: list[dict] = []
    best, best_epoch = None, None
    if resume_state is not None:
        load_checkpoint(config.resume, model, optimizer, map_location=device, state=resume_state)
        for group in optimizer.param_groups:  # the learning rate asked now, not the checkpoint's
            group["lr"] = config.lr
            group["weight_decay"] = config.weight_decay
        metrics = list(resume_state.get("metrics", []))
        # the selection goes on where it stopped: best.pt holds the epoch of highest AUC so far
        aucs = {int(m["epoch"]): float(m["val_auc"]) for m in metrics
                if isinstance(m.get("val_auc"), float) and math.isfinite(m["val_auc"])}
        best_epoch = resume_state.get("best_epoch")
        if best_epoch not in aucs and aucs:
            best_epoch = max(aucs, key=lambda e: (aucs[e], -e))
        if best_epoch in aucs:
            best = aucs[best_epoch]
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    train_labels = labels_only(train_set)  # masks never reach training
    sampler = torch.utils.data.DistributedSampler(train_labels, world, rank, shuffle=True, seed=config.seed) \
        if world > 1 else None
    loader_gen = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train_labels, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=config.workers, drop_last=len(train_labels) > config.batch_size * world,
                        generator=loader_gen if sampler is None else None)
    aug_gen = torch.Generator().manual_seed(config.seed * 7919 + rank)
    if main:
        write_json(os.path.join(config.out, "config.json"), config.flat())
    best_path, last_path = os.path.join(config.out, "best.pt"), os.path.join(config.out, "last.pt")
    for epoch in range(start_epoch, config.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        total, correct, loss_sum = 0, 0, 0.0
        bar = tqdm(loader, desc=f"{config.method} epoch {epoch}/{config.epochs}", leave=False, dynamic_ncols=True,
                   disable=not (main and config.progress))
        for images, labels in bar:
            images, labels = images.to(device), labels.to(device)
            if config.augment:
                images = augment(images, aug_gen)
            out = net(images)
            loss = model.loss(out, labels)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"non-finite loss {float(loss)} at epoch {epoch} (method {config.method}); "
                                       f"lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = len(labels)
            total += n
            loss_sum += float(loss.detach()) * n
            correct += int((out.logits.argmax(1) == labels).sum())
            bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
        bar.close()
        epoch_time = time.perf_counter() - t0
        if main and config.recompute_bn:
            recompute_batchnorm(model, train_labels, config.batch_size, device)
        if world > 1:
            # DDP keeps parameters in step through the gradient all-reduce; BatchNorm
            # statistics (recomputed on rank 0, or each rank's running average) are made
            # rank 0's on every rank, as DDP's own buffer broadcast would.
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)
        if main:
            row = {"epoch": epoch, "train_loss": loss_sum / total, "train_acc": correct / total,
                   **evaluate(model, val_set, device=device), "epoch_time_s": epoch_time, "lr": config.lr}
            metrics.append(row)
            atomic_csv(os.path.join(config.out, "metrics.csv"), METRIC_COLUMNS, metrics)
            auc = row["val_auc"]
            if best is None or (math.isfinite(auc) and auc > best):
                best, best_epoch = (auc if math.isfinite(auc) else -math.inf), epoch
                save_checkpoint(best_path, model, optimizer, epoch, metrics, extra=_extra(config, row, best_epoch))
            save_checkpoint(last_path, model, optimizer, epoch, metrics, extra=_extra(config, row, best_epoch))
            log(f"[{config.method}] epoch {epoch}: loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} | "
                f"val auc {auc:.3f} bal.acc {row['val_balanced_acc']:.3f} (at threshold "
                f"{row['val_balanced_acc_at_threshold']:.3f}) violation {row['val_violation']:.2e} "
                f"({epoch_time:.1f} s)")
        if world > 1:
            dist.barrier()
    if world > 1:
        digests = [None] * world
        dist.all_gather_object(digests, (weights_digest(model), weights_digest(model, buffers=False)))
        if main:
            write_json(os.path.join(config.out, "ddp_check.json"),
                       {"world_size": world, "digests": [d[0] for d in digests],
                        "parameter_digests": [d[1] for d in digests], "identical": len({d[0] for d in digests}) == 1})
        dist.barrier()
        dist.destroy_process_group()
    return {"metrics": metrics, "best": best_path, "last": last_path, "best_epoch": best_epoch, "model": model}


def _extra(config: TrainConfig, row: dict, best_epoch) -> dict:
    """What a training checkpoint stores beyond the weights: the whole configuration, the
    selected epoch and the decision threshold chosen on validation."""
    return {"train_config": config.to_dict(), "best_epoch": best_epoch, "threshold": row["val_threshold"]}
