"""Explanation maps scored against a lesion mask (DESIGN.md §6).

Common form: every map is brought to the image grid by nearest-neighbour upsampling and
made non-negative.  Per image:

* ``ap``: pixel average precision of the map as a lesion detector (scikit-learn's
  ``average_precision_score``);
* ``qiou@q``: IoU between the mask and the pixels at or above the map's ``q``-quantile,
  i.e. the top ``1 − q`` of pixels (``q`` = 0.90, 0.95, 0.975: top 10 / 5 / 2.5 %); pixels
  tied with the threshold are included;
* ``pointing``: 1 if the map's top pixel (first in row-major order among ties) lies in
  the mask;
* ``mass``: the share of the map's mass inside the mask (0 for an all-zero map).

Images whose mask is empty have no defined score and are skipped by the callers.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["to_common_form", "average_precision", "quantile_iou", "pointing", "mass", "score_map",
           "QUANTILES", "METRIC_NAMES"]

QUANTILES = (0.90, 0.95, 0.975)
METRIC_NAMES = ("ap",) + tuple(f"qiou@{q:g}" for q in QUANTILES) + ("pointing", "mass")


def to_common_form(explanation: Tensor, size: tuple[int, int]) -> Tensor:
    """``(h, w)`` map, or ``(C, H, W)`` input attribution -> non-negative ``(H, W)`` map.

    Input attributions are summed over channels in absolute value; coarser maps are
    upsampled by nearest neighbour; negative values (GradCAM before its ReLU) are clipped.
    """
    m = explanation.detach().to(torch.float64)
    if m.dim() == 3:
        m = m.abs().sum(0)
    if m.dim() != 2:
        raise ValueError(f"an explanation map must be (h, w) or (C, h, w), got {tuple(explanation.shape)}")
    if tuple(m.shape) != tuple(size):
        m = F.interpolate(m[None, None], size=tuple(size), mode="nearest")[0, 0]
    return m.clamp(min=0)


def _check(m: Tensor, mask: Tensor) -> tuple[np.ndarray, np.ndarray]:
    if tuple(m.shape) != tuple(mask.shape):
        raise ValueError(f"map {tuple(m.shape)} and mask {tuple(mask.shape)} differ in shape")
    return m.detach().cpu().numpy().ravel(), mask.detach().cpu().numpy().astype(bool).ravel()


def average_precision(m: Tensor, mask: Tensor) -> float:
    from sklearn.metrics import average_precision_score

    values, truth = _check(m, mask)
    if not truth.any():
        return math.nan
    return float(average_precision_score(truth, values))


def quantile_iou(m: Tensor, mask: Tensor, q: float) -> float:
    values, truth = _check(m, mask)
    k = max(1, int(math.ceil(round((1.0 - q) * values.size, 9))))  # round: (1 - 0.95) * 20 = 1.0000000000000009
    threshold = np.partition(values, values.size - k)[values.size - k]
    top = values >= threshold
    union = np.logical_or(top, truth).sum()
    return float(np.logical_and(top, truth).sum() / union) if union else math.nan


def pointing(m: Tensor, mask: Tensor) -> float:
    values, truth = _check(m, mask)
    return float(truth[int(np.argmax(values))])


def mass(m: Tensor, mask: Tensor) -> float:
    values, truth = _check(m, mask)
    total = values.sum()
    return float(values[truth].sum() / total) if total > 0 else 0.0


def score_map(m: Tensor, mask: Tensor) -> dict[str, float]:
    """Every metric of one common-form map against one mask."""
    out = {"ap": average_precision(m, mask)}
    for q in QUANTILES:
        out[f"qiou@{q:g}"] = quantile_iou(m, mask, q)
    out["pointing"] = pointing(m, mask)
    out["mass"] = mass(m, mask)
    return out
