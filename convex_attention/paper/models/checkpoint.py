"""Checkpoints of attention models: weights, optimiser, epoch, metrics and the
architecture they belong to (a checkpoint of another architecture is refused clearly)."""
from __future__ import annotations

import os
from dataclasses import asdict

import torch

from .unet import AttentionUNet, ModelConfig

__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "FORMAT"]

FORMAT = "convex-attention-checkpoint/1"


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def save_checkpoint(path: str, model, optimizer=None, epoch: int = 0, metrics: list | None = None,
                    extra: dict | None = None) -> str:
    """Write atomically (temporary file, then rename): a crash never leaves half a file."""
    model = _unwrap(model)
    state = {"format": FORMAT, "config": asdict(model.config), "model": model.state_dict(), "epoch": epoch,
             "metrics": metrics or [], "optimizer": optimizer.state_dict() if optimizer is not None else None,
             **(extra or {})}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def _read(path: str, map_location="cpu") -> dict:
    if not os.path.exists(path):
        raise ValueError(f"checkpoint {path!r} does not exist")
    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a convex-attention checkpoint (format {FORMAT})")
    return state


def load_checkpoint(path: str, model, optimizer=None, map_location="cpu") -> dict:
    """Load weights (and optimiser state) into ``model``; returns the checkpoint dict.

    Raises ValueError naming the differing fields when the checkpoint belongs to another
    architecture."""
    state = _read(path, map_location)
    model = _unwrap(model)
    saved = ModelConfig(**{**state["config"], "attention_blocks": tuple(state["config"]["attention_blocks"])})
    mine, theirs = model.config.architecture(), saved.architecture()
    diff = {k: (theirs[k], mine[k]) for k in mine if mine[k] != theirs[k]}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs model {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"checkpoint {path!r} is of another architecture ({detail})")
    model.load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state


def load_model(path: str, map_location="cpu") -> tuple[AttentionUNet, dict]:
    """Rebuild the model a checkpoint was saved from and load its weights."""
    state = _read(path, map_location)
    cfg = dict(state["config"])
    options = cfg.pop("solver_options", {}) or {}
    model = AttentionUNet(**cfg, **options)
    load_checkpoint(path, model, map_location=map_location)
    return model, state
