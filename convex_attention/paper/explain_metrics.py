"""Explanation maps scored against a lesion mask (docs/design.md §6).

Two protocols bring a map to the image grid before it is scored.

**Pixel protocol** (:func:`to_common_form`): every map is brought to the image grid,
coarse maps by the chosen upsampling (``"nearest"``, the default of docs/design.md §6, or
``"bilinear"``), and made non-negative; input attributions ``(C, H, W)`` are summed over
channels in absolute value.

**Pooled protocol** (:func:`pooled_form`, the authors' evaluation code): every map is
scored at the resolution of an attention grid.  Input attributions are normalised per
channel by min-max, summed over channels, passed through a softmax over all pixels and
sum-pooled to the grid; GradCAM is min-max normalised and softmaxed on its own grid;
attention maps are used as they are; a map finer than the grid is sum-pooled to it.  The
grid map is upsampled to the image by nearest neighbour and scored against the
pixel-resolution mask, which is the same as scoring it on the grid against the mask
sum-pooled likewise (each cell weighted by its lesion and non-lesion pixel counts).  The
*best possible block map* (:func:`block_map`) is the mask itself sum-pooled to a grid:
no map on that grid scores a higher ``ap``.

Metrics, per image:

* ``ap``: pixel average precision of the map as a lesion detector (scikit-learn's
  ``average_precision_score``);
* ``qiou@q``: IoU between the mask and the pixels at or above the map's ``q``-quantile,
  i.e. the top ``1 − q`` of pixels (``q`` = 0.90, 0.95, 0.975: top 10 / 5 / 2.5 %); pixels
  tied with the threshold are included;
* ``qiou_strict@q``: the authors' variant: IoU between the mask and the pixels strictly
  above ``np.quantile(map, q)`` (linear interpolation), so pixels tied with the
  threshold are left out (a block-constant map can select far fewer than ``1 − q``);
* ``pointing``: 1 if the map's top pixel (first in row-major order among ties) lies in
  the mask;
* ``pointing_tol``: the pointing game's standard tolerance: 1 if that pixel lies within
  15 px of the mask at 240 x 240, scaled with the image (:func:`pointing_tolerance_px`:
  ``15 · max(H, W) / 240`` px, e.g. 8 px at 128 x 128);
* ``mass``: the share of the map's mass inside the mask (0 for an all-zero map).

Images whose mask is empty have no defined score and are skipped by the callers.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import UPSAMPLINGS

__all__ = ["to_common_form", "pooled_form", "block_map", "average_precision", "quantile_iou",
           "quantile_iou_strict", "pointing", "pointing_tolerance", "pointing_tolerance_px", "mass", "score_map",
           "QUANTILES", "METRIC_NAMES", "UPSAMPLINGS", "POINTING_TOLERANCE_PX", "POINTING_REFERENCE_SIZE"]

QUANTILES = (0.90, 0.95, 0.975)
METRIC_NAMES = ("ap",) + tuple(f"qiou@{q:g}" for q in QUANTILES) + tuple(f"qiou_strict@{q:g}" for q in QUANTILES) \
    + ("pointing", "pointing_tol", "mass")
#: The pointing game's tolerance (Zhang et al., 2016: 15 px), defined at 240 x 240 (BraTS slices).
POINTING_TOLERANCE_PX = 15.0
POINTING_REFERENCE_SIZE = 240


def _check_upsampling(upsampling: str) -> str:
    if upsampling not in UPSAMPLINGS:
        raise ValueError(f"upsampling must be one of {', '.join(UPSAMPLINGS)}, got {upsampling!r}")
    return upsampling


def _upsample(m: Tensor, size, upsampling: str) -> Tensor:
    """``(h, w)`` -> ``(H, W)`` float64; ``bilinear`` with ``align_corners=False`` (cell centres)."""
    if tuple(m.shape) == tuple(size):
        return m
    if upsampling == "nearest":
        return F.interpolate(m[None, None], size=tuple(size), mode="nearest")[0, 0]
    return F.interpolate(m[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]


def to_common_form(explanation: Tensor, size: tuple[int, int], upsampling: str = "nearest") -> Tensor:
    """``(h, w)`` map, or ``(C, H, W)`` input attribution -> non-negative ``(H, W)`` map
    (the pixel protocol).

    Input attributions are summed over channels in absolute value; coarser maps are
    upsampled (``upsampling``: ``"nearest"`` or ``"bilinear"``); negative values (GradCAM
    before its ReLU) are clipped.
    """
    _check_upsampling(upsampling)
    m = explanation.detach().to(torch.float64)
    if m.dim() == 3:
        m = m.abs().sum(0)
    if m.dim() != 2:
        raise ValueError(f"an explanation map must be (h, w) or (C, h, w), got {tuple(explanation.shape)}")
    return _upsample(m, size, upsampling).clamp(min=0)


def _sum_pool(m: Tensor, grid: tuple[int, int]) -> Tensor:
    """``(h, w)`` -> ``grid`` by summing blocks; ``h, w`` must be multiples of the grid."""
    h, w = m.shape
    gh, gw = grid
    if h < gh or w < gw or h % gh or w % gw:
        raise ValueError(f"a {h}x{w} map cannot be sum-pooled to a {gh}x{gw} grid: the grid must be at most as fine "
                         f"as the map and divide it")
    return m.reshape(gh, h // gh, gw, w // gw).sum((1, 3))


def pooled_form(explanation: Tensor, grid: tuple[int, int], normalise: bool) -> Tensor:
    """A map on an attention grid, by the authors' pooled protocol (module docstring).

    ``explanation``: ``(C, H, W)`` (an input attribution) or ``(h, w)``; ``normalise``:
    per-channel min-max normalisation (a constant channel becomes zeros), sum over
    channels and a softmax over all cells, as the authors do for input attributions and
    GradCAM (False for attention maps and block maps, used as they are).  Then the map is
    sum-pooled to ``grid`` (``(gh, gw)``, at most as fine as the map).  Returns
    ``(gh, gw)`` float64.
    """
    m = explanation.detach().to(torch.float64)
    if m.dim() == 2:
        m = m[None]
    if m.dim() != 3:
        raise ValueError(f"an explanation map must be (h, w) or (C, h, w), got {tuple(explanation.shape)}")
    if normalise:
        flat = m.flatten(1)
        low, high = flat.min(1).values, flat.max(1).values
        span = (high - low).clamp(min=torch.finfo(torch.float64).tiny)
        m = ((m - low.view(-1, 1, 1)) / span.view(-1, 1, 1)).sum(0)
        m = torch.softmax(m.flatten(), 0).reshape(m.shape)
    else:
        m = m.sum(0)
    return _sum_pool(m, tuple(grid))


def block_map(mask: Tensor, grid: tuple[int, int]) -> Tensor:
    """The best possible map on a grid: the mask sum-pooled to ``grid`` (lesion pixels per
    cell), ``(gh, gw)`` float64.  Upsampled by nearest neighbour it ranks every cell by its
    lesion pixel count, which no map constant on the cells can beat in ``ap``."""
    return _sum_pool(mask.detach().to(torch.float64), tuple(grid))


def _check(m: Tensor, mask: Tensor) -> tuple[np.ndarray, np.ndarray]:
    if tuple(m.shape) != tuple(mask.shape):
        raise ValueError(f"map {tuple(m.shape)} and mask {tuple(mask.shape)} differ in shape")
    return m.detach().cpu().numpy().ravel(), mask.detach().cpu().numpy().astype(bool).ravel()


def average_precision(m: Tensor, mask: Tensor) -> float:
    """Pixel average precision, exactly scikit-learn's ``average_precision_score`` (pixels
    tied in value share one threshold), computed by one sort (twice as fast: every map
    of the experiment is scored at several resolutions); NaN for an empty mask."""
    values, truth = _check(m, mask)
    if not truth.any():
        return math.nan
    order = np.argsort(-values, kind="mergesort")
    s, y = values[order], truth[order]
    last = np.r_[s[1:] != s[:-1], True]  # the last pixel of each distinct value: one threshold each
    tp = np.cumsum(y)[last]
    precision = tp / (np.nonzero(last)[0] + 1)
    return float((np.diff(tp, prepend=0) / tp[-1] * precision).sum())


def quantile_iou(m: Tensor, mask: Tensor, q: float) -> float:
    values, truth = _check(m, mask)
    k = max(1, int(math.ceil(round((1.0 - q) * values.size, 9))))  # round: (1 - 0.95) * 20 = 1.0000000000000009
    threshold = np.partition(values, values.size - k)[values.size - k]
    top = values >= threshold
    union = np.logical_or(top, truth).sum()
    return float(np.logical_and(top, truth).sum() / union) if union else math.nan


def quantile_iou_strict(m: Tensor, mask: Tensor, q: float) -> float:
    """The authors' q-IoU: pixels strictly above ``np.quantile(map, q)`` against the mask."""
    values, truth = _check(m, mask)
    top = values > np.quantile(values, q)
    union = np.logical_or(top, truth).sum()
    return float(np.logical_and(top, truth).sum() / union) if union else math.nan


def pointing(m: Tensor, mask: Tensor) -> float:
    values, truth = _check(m, mask)
    return float(truth[int(np.argmax(values))])


def pointing_tolerance_px(size) -> float:
    """The pointing tolerance at an image of ``size`` (``(H, W)``): 15 px at 240 x 240,
    scaled with the larger side (``15 · max(H, W) / 240``)."""
    return POINTING_TOLERANCE_PX * max(int(s) for s in size) / POINTING_REFERENCE_SIZE


def pointing_tolerance(m: Tensor, mask: Tensor, tolerance: float | None = None) -> float:
    """1 if the map's top pixel (as in :func:`pointing`) lies within ``tolerance`` pixels
    (Euclidean) of a mask pixel, else 0; ``tolerance`` defaults to
    :func:`pointing_tolerance_px` of the mask's size.  NaN for an empty mask."""
    from scipy.ndimage import distance_transform_edt

    values, truth = _check(m, mask)
    if not truth.any():
        return math.nan
    tol = pointing_tolerance_px(mask.shape) if tolerance is None else float(tolerance)
    distance = distance_transform_edt(~truth.reshape(tuple(mask.shape)))  # to the nearest mask pixel
    return float(distance.ravel()[int(np.argmax(values))] <= tol)


def mass(m: Tensor, mask: Tensor) -> float:
    values, truth = _check(m, mask)
    total = values.sum()
    return float(values[truth].sum() / total) if total > 0 else 0.0


def score_map(m: Tensor, mask: Tensor, tolerance: float | None = None) -> dict[str, float]:
    """Every metric of :data:`METRIC_NAMES` of one image-resolution map against one mask
    (``tolerance``: of ``pointing_tol``, default :func:`pointing_tolerance_px`)."""
    out = {"ap": average_precision(m, mask)}
    for q in QUANTILES:
        out[f"qiou@{q:g}"] = quantile_iou(m, mask, q)
    for q in QUANTILES:
        out[f"qiou_strict@{q:g}"] = quantile_iou_strict(m, mask, q)
    out["pointing"] = pointing(m, mask)
    out["pointing_tol"] = pointing_tolerance(m, mask, tolerance)
    out["mass"] = mass(m, mask)
    return out
