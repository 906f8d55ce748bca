"""Attention scores of a trained model, as a score generator for the benchmarks
(``convex-attention bench --generator model --checkpoint PATH``; the command layer
registers :func:`model_scores` with the harness, which never imports this wing).

The checkpoint is read like every checkpoint (:func:`~convex_attention.paper.models.read_checkpoint`:
tensors and plain containers only, nothing in it can run code)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..hierarchy import Hierarchy
from .config import ModelConfig, TrainConfig
from .data import build_datasets
from .models import load_model, read_checkpoint
from .train import stored_train_config

__all__ = ["model_scores", "checkpoint_shapes", "check_model_sweep"]


def checkpoint_shapes(checkpoint: str) -> list[tuple[int, ...]]:
    """The attention levels' grid shapes of a checkpoint (without building the model)."""
    cfg = ModelConfig.from_dict(read_checkpoint(checkpoint)["config"])
    return [(cfg.image_size // 2 ** (k - 1),) * 2 for k in cfg.attention_blocks]


def model_scores(h: Hierarchy, batch: int, seed: int = 0, scale: float = 1.0, checkpoint: str | None = None,
                 **_) -> list[Tensor]:
    """The heads' scores of ``checkpoint``'s model on ``batch`` synthetic images.

    The images come from the synthetic dataset with the difficulty and size the model was
    trained with (its stored training configuration, else the defaults), at a seed
    disjoint from training and validation.  Returns ``L`` float64 tensors
    ``(B, *h.shapes[k])``; ``h`` must match the model's levels.
    """
    if checkpoint is None:
        raise ValueError("the model score generator needs a checkpoint")
    shapes = checkpoint_shapes(checkpoint)
    if [tuple(s) for s in h.shapes] != shapes:
        raise ValueError(f"the checkpoint's attention levels are {shapes}, the sweep asks for {h.shapes}: use "
                         f"--dims 2 --factor 2 --sizes {shapes[0][0]} --levels {len(shapes)}")
    model, state = load_model(checkpoint)
    model.eval()
    stored = stored_train_config(checkpoint, state) or TrainConfig()
    # images of the synthetic source the model was trained on (any other source needs files)
    source = stored.data if stored.data_root is None else TrainConfig().data
    data, _ = build_datasets(source, None, model.config.image_size, model.config.in_channels, batch, 1,
                             stored.difficulty, 20_000 + seed)
    images = torch.stack([data[i][0] for i in range(batch)])
    with torch.no_grad():
        scores = model(images).scores
    return [scale * s.to(torch.float64) for s in scores]


def check_model_sweep(checkpoint: str, sizes, levels, dims, factor) -> None:
    """Refuse a sweep whose grids differ from the checkpoint's attention levels (ValueError)."""
    shapes = checkpoint_shapes(checkpoint)
    if (list(sizes), list(levels), list(dims), factor) != ([shapes[0][0]], [len(shapes)], [2], 2):
        raise ValueError(f"the checkpoint's attention levels are {shapes}: run the model generator with "
                         f"--sizes {shapes[0][0]} --levels {len(shapes)} --dims 2 --factor 2")
