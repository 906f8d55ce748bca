"""One saved instance for the attention-map figure (``example.npz``: arrays only)."""
from __future__ import annotations

import os

import numpy as np
import torch

from ..hierarchy import Hierarchy
from .duals import fit_shared_duals
from .generators import generate

__all__ = ["save_example"]


def save_example(out_dir: str, generator: str = "lesion", size: int = 32, levels: int = 2, scale: float = 1.0,
                 seed: int = 0, fit_instances: int = 128, fit_steps: int = 150) -> str:
    """One 2-D instance (scores and the fitted shared λ) for the attention-map figure."""
    h = Hierarchy.grid([(size // 2 ** k,) * 2 for k in range(levels)])
    temps = [1.0] * levels
    scores = generate(generator, h, 1, seed=seed + 100, scale=scale)
    train = generate(generator, h, fit_instances, seed=seed + 1, scale=scale)
    fitted = fit_shared_duals(h, train, temps, fit_steps, torch.float64)
    path = os.path.join(out_dir, "example.npz")
    arrays = {f"scores{k}": s[0].numpy() for k, s in enumerate(scores)}
    arrays.update({f"fitted_dual{k}": d[0].numpy() for k, d in enumerate(fitted)})
    np.savez(path, levels=levels, temperature=np.array(temps), **arrays)
    return path
