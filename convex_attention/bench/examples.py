"""One saved instance for the attention-map figure (``example.npz``: arrays only, written
atomically; read it with ``numpy.load(..., allow_pickle=False)``)."""
from __future__ import annotations

import io
import os

import numpy as np
import torch

from ..hierarchy import Hierarchy
from ..io.files import atomic_write_bytes
from .config import capped_instances
from .duals import fit_amortiser, fit_shared_duals
from .generators import generate

__all__ = ["save_example", "example_has_duals"]


def example_has_duals(path: str) -> bool:
    """Whether the ``example.npz`` at ``path`` holds the fitted shared λ (written by a sweep
    of learned_dual); False where it cannot be read as one."""
    try:
        # opened here, not by np.load: numpy leaves its own handle open on an unreadable archive
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
            return "fitted_dual0" in data.files
    except Exception:  # noqa: BLE001 -- damaged in any way (a truncated zip is BadZipFile): written again
        return False


def save_example(out_dir: str, generator: str = "lesion", size: int = 32, levels: int = 2, scale: float = 1.0,
                 seed: int = 0, fit_instances: int = 128, fit_steps: int = 150, amortised_steps: int = 0,
                 fit_max_values: int | None = None) -> str:
    """One 2-D instance for the attention-map figure: ``scores{k}`` ``(size/2^k, size/2^k)``;
    with ``fit_steps > 0`` the fitted shared λ ``fitted_dual{k}`` ``(size/2^(k+1), …)``; with
    ``amortised_steps > 0`` and the amortised dual available, its prediction for this
    instance ``amortised_dual{k}`` (same shapes); ``levels`` and ``temperature`` (L,).

    The instance (seed ``seed + 100``) is held out from the training instances (``seed + 1``),
    ``fit_instances`` of them, fewer where ``fit_max_values`` caps instances × cells as it
    caps a sweep's (:func:`~.config.fit_instances`).  A sweep passes its ``seed``, ``scale``
    and training settings, so that the example is an instance of its own.
    """
    h = Hierarchy.grid([(size // 2 ** k,) * 2 for k in range(levels)])
    temps = [1.0] * levels
    scores = generate(generator, h, 1, seed=seed + 100, scale=scale)
    arrays = {f"scores{k}": s[0].numpy() for k, s in enumerate(scores)}
    n_train = capped_instances(fit_instances, fit_max_values, sum(h.sizes))
    train = generate(generator, h, n_train, seed=seed + 1, scale=scale) if fit_steps or amortised_steps else None
    if fit_steps > 0:
        fitted = fit_shared_duals(h, train, temps, fit_steps, torch.float64)
        arrays.update({f"fitted_dual{k}": d[0].numpy() for k, d in enumerate(fitted)})
    if amortised_steps > 0:
        net = fit_amortiser(h, train, temps, amortised_steps, torch.float32, seed=seed + 2)
        with torch.no_grad():
            predicted = net([s.float() for s in scores])
        arrays.update({f"amortised_dual{k}": d[0].double().numpy() for k, d in enumerate(predicted)})
    buf = io.BytesIO()
    np.savez(buf, levels=np.array(levels), temperature=np.array(temps), **arrays)
    path = os.path.join(out_dir, "example.npz")
    atomic_write_bytes(path, buf.getvalue())
    return path
