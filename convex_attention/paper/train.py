"""Training of the attention CNN on weakly annotated images (labels only, never masks).

``train(TrainConfig(...))`` or ``convex-attention train ...``.  Adam, cross-entropy (plus
``alpha · consistency_loss`` for ``learned_dual``), flips and small affine augmentation,
a seed, per-epoch metrics in ``metrics.csv`` (loss, accuracy, balanced accuracy, mean
attention ``violation`` on validation, epoch time), checkpoints ``best.pt`` (by
validation balanced accuracy) and ``last.pt``, and ``--resume``.

Multi-machine: the same code runs under ``torchrun`` with DistributedDataParallel (gloo on
CPU, nccl on GPU), a DistributedSampler, and logging and checkpoints on rank 0 only.  At
the end every rank hashes its weights; rank 0 writes ``ddp_check.json``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .data import build_datasets, labels_only
from .models import AttentionUNet, load_checkpoint, save_checkpoint

__all__ = ["TrainConfig", "train", "evaluate", "augment", "METRIC_COLUMNS"]

METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc", "val_violation",
                  "epoch_time_s", "lr")


@dataclass
class TrainConfig:
    out: str = "runs/model"
    method: str = "learned_dual"
    data: str = "synthetic"
    data_root: str | None = None
    image_size: int = 128
    channels: int = 4
    n_train: int = 2000
    n_val: int = 500
    difficulty: float = 0.5
    width: int = 32
    attention_blocks: tuple = (3, 4)
    temperature: float = 1.0
    alpha: float = 10.0
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    augment: bool = True
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    resume: str | None = None
    progress: bool = True
    solver_options: dict = field(default_factory=dict)


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


@torch.no_grad()
def evaluate(model: AttentionUNet, dataset: Dataset, batch_size: int = 64, device="cpu") -> dict:
    """Loss, accuracy, balanced accuracy and mean attention violation on ``dataset``."""
    model.eval()
    loader = DataLoader(labels_only(dataset), batch_size=batch_size, shuffle=False)
    losses, preds, targets, violations = [], [], [], []
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        out = model(images)
        losses.append(float(model.loss(out, labels)) * len(labels))
        preds.append(out.logits.argmax(1).cpu())
        targets.append(labels.cpu())
        violations.append(out.solution.violation.detach().cpu())
    pred, target = torch.cat(preds), torch.cat(targets)
    return {"val_loss": sum(losses) / len(target), "val_acc": float((pred == target).float().mean()),
            "val_balanced_acc": balanced_accuracy(pred, target, model.config.num_classes),
            "val_violation": float(torch.cat(violations).mean())}


def build_model(config: TrainConfig) -> AttentionUNet:
    return AttentionUNet(in_channels=config.channels, width=config.width, image_size=config.image_size,
                         attention_blocks=tuple(config.attention_blocks), method=config.method,
                         temperature=config.temperature, alpha=config.alpha, **config.solver_options)


def _write_metrics(path: str, rows: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(METRIC_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- training

def train(config: TrainConfig, datasets: tuple[Dataset, Dataset] | None = None) -> dict:
    """Train; returns ``{"metrics": rows, "best": path, "last": path, "model": model}``."""
    from tqdm.auto import tqdm

    world, rank, local_rank = _distributed()
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if (torch.cuda.is_available() and config.device in ("auto", "cuda")) else "gloo"
        dist.init_process_group(backend=backend)
    device = _device(config, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seed_everything(config.seed)
    main = rank == 0
    train_set, val_set = datasets or build_datasets(config.data, config.data_root, config.image_size,
                                                    config.channels, config.n_train, config.n_val,
                                                    config.difficulty, config.seed)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"empty dataset: {len(train_set)} training and {len(val_set)} validation images")
    first = train_set[0][0]
    if first.shape[0] != config.channels:
        raise ValueError(f"the data has {first.shape[0]} channels but the model expects {config.channels} "
                         f"(--channels)")
    model = build_model(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if main:
        os.makedirs(config.out, exist_ok=True)
    metrics: list[dict] = []
    start_epoch, best = 1, -1.0
    if config.resume:
        state = load_checkpoint(config.resume, model, optimizer, map_location=device)
        metrics = list(state.get("metrics", []))
        start_epoch = int(state["epoch"]) + 1
        best = max([float(m["val_balanced_acc"]) for m in metrics] or [-1.0])
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
        with open(os.path.join(config.out, "config.json"), "w") as f:
            json.dump(asdict(config), f, indent=1)
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
                raise RuntimeError(f"non-finite loss {float(loss)} at epoch {epoch} (method {config.method}); "
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
        if world > 1:
            # DDP keeps parameters in step through the gradient all-reduce; BatchNorm
            # running statistics are only broadcast from rank 0 at the next forward, so
            # each rank's last local update is replaced by rank 0's here, as DDP would.
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)
        if main:
            row = {"epoch": epoch, "train_loss": loss_sum / total, "train_acc": correct / total,
                   **evaluate(model, val_set, device=device), "epoch_time_s": epoch_time, "lr": config.lr}
            metrics.append(row)
            _write_metrics(os.path.join(config.out, "metrics.csv"), metrics)
            save_checkpoint(last_path, model, optimizer, epoch, metrics)
            if row["val_balanced_acc"] > best:
                best = row["val_balanced_acc"]
                save_checkpoint(best_path, model, optimizer, epoch, metrics)
            if config.progress:
                print(f"[{config.method}] epoch {epoch}: loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} | "
                      f"val bal.acc {row['val_balanced_acc']:.3f} violation {row['val_violation']:.2e} "
                      f"({epoch_time:.1f} s)", flush=True)
        if world > 1:
            dist.barrier()
    if world > 1:
        digests = [None] * world
        dist.all_gather_object(digests, (weights_digest(model), weights_digest(model, buffers=False)))
        if main:
            with open(os.path.join(config.out, "ddp_check.json"), "w") as f:
                json.dump({"world_size": world, "digests": [d[0] for d in digests],
                           "parameter_digests": [d[1] for d in digests],
                           "identical": len({d[0] for d in digests}) == 1}, f, indent=1)
        dist.barrier()
        dist.destroy_process_group()
    return {"metrics": metrics, "best": best_path, "last": last_path, "model": model}
