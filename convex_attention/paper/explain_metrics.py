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
*best possible block map* (:func:`block_map`) ranks a grid's cells by their lesion pixel
counts, ties broken: no map constant on the (equal-size) cells of that grid scores a
higher ``ap``.

Metrics, per image:

* ``ap``: pixel average precision of the map as a lesion detector (scikit-learn's
  ``average_precision_score``);
* ``qiou@q``: IoU between the mask and the pixels at or above the map's ``q``-quantile,
  i.e. the top ``1 − q`` of pixels (``q`` = 0.90, 0.95, 0.975: top 10 / 5 / 2.5 %); pixels
  tied with the threshold are included;
* ``qiou_strict@q``: the authors' variant: IoU between the mask and the pixels strictly
  above ``np.quantile(map, q)`` (linear interpolation), so pixels tied with the
  threshold are left out (a block-constant map can select far fewer than ``1 − q``);
* ``pointing``: whether the map's top pixel lies in the mask, ties for the top broken
  uniformly at random and scored in expectation: the share of the map's maximal pixels
  that lie in the mask.  A map with one top pixel scores 1 or 0; a coarse map upsampled by
  nearest neighbour ties every pixel of its best cell, which all count; a constant map
  scores the mask's pixel share, the chance level;
* ``pointing_tol``: the pointing game's standard tolerance: the share of the maximal
  pixels that lie within 15 px of the mask at 240 x 240, scaled with the image
  (:func:`pointing_tolerance_px`: ``15 · max(H, W) / 240`` px, e.g. 8 px at 128 x 128);
* ``mass``: the share of the map's mass inside the mask (0 for an all-zero map).

A mask's lesion pixels are its non-zero ones; a mask holding NaN is refused (ValueError), as
a pixel that is neither.  A map holding NaN or Inf is refused (ValueError): it ranks no pixels, and a metric of it
would read as a number.  An image whose mask is empty has no defined score: every metric
of it is NaN (the callers explain only images with a non-empty mask).

The committed runs' files were scored under an earlier rule: ``pointing`` and
``pointing_tol`` took the *first* maximal pixel in row-major order (the top-left pixel of
the best cell of a nearest-upsampled grid map), and the block map left cells of equal
lesion counts tied at one threshold; docs/experiment.md says which committed numbers that
affects.
"""
from __future__ import annotations

import math
import numbers

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
    if upsampling == "nearest":  # each pixel takes the cell holding its centre (torch's "nearest" is half a pixel
        # off at scales that are not whole numbers; at whole ones the two agree: ca_rev135)
        return F.interpolate(m[None, None], size=tuple(size), mode="nearest-exact")[0, 0]
    return F.interpolate(m[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]


def to_common_form(explanation: Tensor, size: tuple[int, int], upsampling: str = "nearest") -> Tensor:
    """``(h, w)`` map, or ``(C, H, W)`` input attribution -> non-negative ``(H, W)`` map
    (the pixel protocol).

    Input attributions are summed over channels in absolute value; coarser maps are
    upsampled (``upsampling``: ``"nearest"`` or ``"bilinear"``); negative values (GradCAM
    before its ReLU) are clipped.  A map finer than the image in either dimension is a
    ValueError (interpolation would keep some of its cells and drop the rest).
    """
    _check_upsampling(upsampling)
    m = explanation.detach().to(torch.float64)
    _check_finite(m)  # else clamp(min=0) would turn -Inf into 0, a number
    if m.dim() == 3:
        m = m.abs().sum(0)
    if m.dim() != 2:
        raise ValueError(f"an explanation map must be (h, w) or (C, h, w), got {tuple(explanation.shape)}")
    if m.shape[0] > size[0] or m.shape[1] > size[1]:  # interpolation would sample a few of its cells (ca_rev180)
        raise ValueError(f"a {m.shape[0]}x{m.shape[1]} map is finer than the {size[0]}x{size[1]} image it is scored "
                         f"on: upsampling samples some of its cells and drops the rest; pool it to the image first")
    return _upsample(m, size, upsampling).clamp(min=0)


def _sum_pool(m: Tensor, grid: tuple[int, ...]) -> Tensor:  # (two: unpacked below)
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
    _check_finite(m)
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
    """The best possible map on a grid: ``mask`` ``(H, W)`` sum-pooled to ``grid`` ``(gh,
    gw)`` (lesion pixels per cell), with ties between cells of equal non-zero counts broken:
    ``(gh, gw)`` float64.

    Upsampled by nearest neighbour it ranks the cells by their lesion pixel counts, each
    cell at its own threshold.  Because the cells are of equal size (the grid must divide
    the mask), no map constant on the cells scores a higher ``ap``.  Among strict orders of
    the cells, a cell with more lesion pixels right after one with fewer gains ``ap`` when
    the two swap (an adjacent exchange), so the count order is best.  Cells left tied at
    one threshold score no more: scikit-learn's ``ap`` gives every lesion pixel of a tie
    the precision at the tie's end, and in the count order each cell's lesion share is at
    most the precision reached before it, so precision only falls through a tie and
    ranking its cells one after the other loses nothing (tests check every order, ties
    included, of small grids).  Plain counts tie the cells of equal counts, which scores
    lower: two cells with 2 of 16 lesion pixels after one with 16 of 16 give ap 0.883 tied
    and 0.898 ranked.  For cells of unequal sizes no such claim would hold (the order by
    lesion share need not maximise ``ap``).

    Ties are broken in row-major order by the offset ``(n − 1 − i) / n²`` of cell ``i`` of
    the ``n = gh · gw``: below ``1 / n`` each and below ``1 / 2`` over all cells, so the
    map sum-pooled to a coarser grid still orders cells of different integer counts by
    count.  Cells without lesion pixels stay at 0: their order cannot change ``ap``.
    ``mass`` reads these values, so it differs from that of the plain counts by at most the
    offsets; ``qiou@q`` and ``pointing`` do not: they count the pixels tied with a threshold
    (or the top), so breaking a tie can move whole cells in or out (two cells of 2 lesion
    pixels on a 2×2 grid: ``qiou@0.9`` 0.500 tied, 0.333 ranked).  A lesion pixel is a non-zero
    one of ``mask``, as the metrics read it (a soft or 0/255 mask is counted, not summed)."""
    # the metrics read a mask as bool: summing a soft mask's values ranked its cells otherwise (ca_rev246)
    counts = _sum_pool(_lesion(mask).to(torch.float64), tuple(grid))
    n = counts.numel()
    offset = (n - 1 - torch.arange(n, dtype=torch.float64)).reshape(counts.shape) / n ** 2
    return counts + torch.where(counts > 0, offset, torch.zeros_like(offset))


def _check_finite(m: Tensor) -> None:
    """Refuse a map holding NaN or Inf before it is transformed (clipping would turn -Inf into 0)."""
    if not bool(torch.isfinite(m).all()):
        raise ValueError(f"the map holds {int((~torch.isfinite(m)).sum())} NaN or Inf value(s) of {m.numel()}: "
                         f"it ranks no pixels, so it is not scored")


def _lesion(mask: Tensor) -> Tensor:
    """The mask's lesion pixels: its non-zero ones.  A NaN is neither lesion nor background
    (``!= 0`` would count it as lesion), so a mask holding one is refused."""
    mask = mask.detach()
    if mask.is_floating_point() and bool(torch.isnan(mask).any()):
        raise ValueError(f"the mask holds {int(torch.isnan(mask).sum())} NaN value(s) of {mask.numel()}: "
                         f"a pixel that is neither lesion nor background, so nothing is scored against it")
    return mask != 0


def _check(m: Tensor, mask: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(values, truth)``: the map and the mask flattened, after checking that their shapes
    agree and that the map is finite (a NaN would otherwise sort as a value, and a score of
    a map that is not a number would be reported as one)."""
    if tuple(m.shape) != tuple(mask.shape):
        raise ValueError(f"map {tuple(m.shape)} and mask {tuple(mask.shape)} differ in shape")
    _check_finite(m)
    values = m.detach().cpu().to(torch.float64).numpy().ravel()  # float64: a float16 sum overflows at 65504
    return values, _lesion(mask).cpu().numpy().ravel()


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


def _check_quantile(q) -> None:
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0.0 <= float(q) < 1.0:
        raise ValueError(f"a quantile of q-IoU is a number in [0, 1), got {q!r}")


def quantile_iou(m: Tensor, mask: Tensor, q: float) -> float:
    """IoU of the mask with the top ``1 − q`` of pixels, ties with the threshold included;
    NaN for an empty mask.  ValueError unless ``0 <= q < 1`` (outside, the share of pixels is
    no share: the partition's index would wrap)."""
    _check_quantile(q)
    values, truth = _check(m, mask)
    if not truth.any():
        return math.nan
    k = max(1, int(math.ceil(round((1.0 - q) * values.size, 9))))  # round: (1 - 0.95) * 20 = 1.0000000000000009
    threshold = np.partition(values, values.size - k)[values.size - k]
    top = values >= threshold
    union = np.logical_or(top, truth).sum()
    return float(np.logical_and(top, truth).sum() / union) if union else math.nan


def quantile_iou_strict(m: Tensor, mask: Tensor, q: float) -> float:
    """The authors' q-IoU: pixels strictly above ``np.quantile(map, q)`` against the mask;
    NaN for an empty mask.  ValueError unless ``0 <= q < 1``, as :func:`quantile_iou` (at
    ``q = 1`` no pixel is above the maximum: an IoU of 0 whatever the map)."""
    _check_quantile(q)
    values, truth = _check(m, mask)
    if not truth.any():
        return math.nan
    top = values > np.quantile(values, q)
    union = np.logical_or(top, truth).sum()
    return float(np.logical_and(top, truth).sum() / union) if union else math.nan


def _top(values: np.ndarray) -> np.ndarray:
    """Where the map reaches its maximum (every tied pixel): the pointing game's candidates."""
    return values == values.max()


def pointing(m: Tensor, mask: Tensor) -> float:
    """The pointing game with ties broken uniformly at random, in expectation: the share of
    the map's maximal pixels that lie in the mask (1 or 0 when one pixel is the top; the
    mask's pixel share for a constant map); NaN for an empty mask.  Taking the first
    maximal pixel instead would score a nearest-upsampled coarse map by the top-left pixel
    of its best cell, and a constant map by the image's corner."""
    values, truth = _check(m, mask)
    if not truth.any():
        return math.nan
    return float(truth[_top(values)].mean())


def pointing_tolerance_px(size) -> float:
    """The pointing tolerance at an image of ``size`` (``(H, W)``): 15 px at 240 x 240,
    scaled with the larger side (``15 · max(H, W) / 240``)."""
    return POINTING_TOLERANCE_PX * max(int(s) for s in size) / POINTING_REFERENCE_SIZE


def _check_tolerance(tolerance) -> None:
    if tolerance is None:
        return
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not (
            math.isfinite(float(tolerance)) and float(tolerance) >= 0):
        raise ValueError(f"a pointing tolerance is a finite distance in pixels, at least 0; got {tolerance!r}")


def pointing_tolerance(m: Tensor, mask: Tensor, tolerance: float | None = None) -> float:
    """The pointing game within ``tolerance`` pixels (Euclidean) of a mask pixel, ties for
    the top broken as in :func:`pointing`: the share of the map's maximal pixels within
    ``tolerance`` of the mask (1 or 0 when one pixel is the top); ``tolerance`` defaults to
    :func:`pointing_tolerance_px` of the mask's size.  NaN for an empty mask; ValueError for
    a tolerance that is not a distance (negative or not finite: no pixel would be within it)."""
    from scipy.ndimage import distance_transform_edt

    _check_tolerance(tolerance)
    values, truth = _check(m, mask)
    if not truth.any():
        return math.nan
    tol = pointing_tolerance_px(mask.shape) if tolerance is None else float(tolerance)
    distance = distance_transform_edt(~truth.reshape(tuple(mask.shape)))  # to the nearest mask pixel
    return float((distance.ravel()[_top(values)] <= tol).mean())


def _check_non_negative(values: np.ndarray) -> None:
    """ValueError for a map with negative values, whose share of mass is no share (:func:`mass`)."""
    if values.size and values.min() < 0:
        raise ValueError(f"mass is a share of a non-negative map's mass; this map has negative values (down to "
                         f"{values.min():.3g}): score its to_common_form (absolute values summed over channels, "
                         f"negative values clipped)")


def mass(m: Tensor, mask: Tensor) -> float:
    """The share of the map's mass inside the mask (0 for an all-zero map); NaN for an
    empty mask.  The map must be non-negative (ValueError): a signed map's "share" can pass 1
    or fall below 0 (:func:`to_common_form` gives every map its non-negative form)."""
    values, truth = _check(m, mask)
    _check_non_negative(values)
    if not truth.any():
        return math.nan
    with np.errstate(over="ignore"):
        total = values.sum()
    if not math.isfinite(total):  # finite values whose sum overflows (ca_rev246): their share is scale-free
        values = values / values.max()
        total = values.sum()
    return float(values[truth].sum() / total) if total > 0 else 0.0


def score_map(m: Tensor, mask: Tensor, tolerance: float | None = None) -> dict[str, float]:
    """Every metric of :data:`METRIC_NAMES` of one image-resolution map ``m`` ``(H, W)``
    against one mask ``(H, W)`` (``tolerance``: of ``pointing_tol``, default
    :func:`pointing_tolerance_px`).  Every metric is NaN for an empty mask (no score is
    defined); a map holding NaN or Inf or negative values (:func:`to_common_form` gives a map
    its non-negative form), and a tolerance that is not a distance, are refused (ValueError)."""
    _check_non_negative(_check(m, mask)[0])  # refused before any metric, whatever the mask
    _check_tolerance(tolerance)
    out = {"ap": average_precision(m, mask)}
    for q in QUANTILES:
        out[f"qiou@{q:g}"] = quantile_iou(m, mask, q)
    for q in QUANTILES:
        out[f"qiou_strict@{q:g}"] = quantile_iou_strict(m, mask, q)
    out["pointing"] = pointing(m, mask)
    out["pointing_tol"] = pointing_tolerance(m, mask, tolerance)
    out["mass"] = mass(m, mask)
    return out
