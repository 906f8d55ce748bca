import math

import numpy as np
import pytest
import torch

from convex_attention.paper.explain_metrics import (
    average_precision,
    mass,
    pointing,
    quantile_iou,
    score_map,
    to_common_form,
)

# a 4x5 image (20 pixels); the mask covers the 4 pixels of the top-left 2x2 square
MASK = torch.zeros(4, 5, dtype=torch.bool)
MASK[:2, :2] = True


def test_common_form_upsamples_by_nearest_neighbour_and_sums_channels():
    coarse = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    up = to_common_form(coarse, (4, 4))
    assert torch.equal(up, torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]], dtype=torch.float64))
    attr = torch.tensor([[[1.0, -2.0]], [[-3.0, 0.5]]])  # (C=2, 1, 2)
    assert torch.equal(to_common_form(attr, (1, 2)), torch.tensor([[4.0, 2.5]], dtype=torch.float64))
    assert torch.equal(to_common_form(torch.tensor([[-1.0, 2.0]]), (1, 2)),
                       torch.tensor([[0.0, 2.0]], dtype=torch.float64))
    with pytest.raises(ValueError):
        to_common_form(torch.zeros(1, 1, 2, 2), (2, 2))


def test_perfect_map():
    m = MASK.double()
    s = score_map(m, MASK)
    assert s["ap"] == 1.0 and s["pointing"] == 1.0 and s["mass"] == 1.0
    # top 10 % of 20 pixels = 2 pixels; ties at the threshold are included: all 4 ones
    assert s["qiou@0.9"] == 1.0


def test_values_by_hand():
    m = torch.zeros(4, 5, dtype=torch.float64)
    m[0, 0] = 5.0   # in the mask
    m[3, 4] = 4.0   # outside
    m[1, 1] = 3.0   # in the mask
    m[2, 2] = 1.0   # outside
    # ranking: 5 (hit), 4 (miss), 3 (hit), 1 (miss), then 16 zeros (2 hits among them)
    # AP = mean over the 4 positives of precision at their rank; the zero-valued tie block
    # counts as one threshold (scikit-learn): precisions 1/1, 2/3, and 4/20 for the tied two
    ap = (1 / 1 + 2 / 3 + 4 / 20 * 2) / 4
    assert math.isclose(average_precision(m, MASK), ap, rel_tol=1e-12)
    # top 10 % = 2 pixels: {(0,0), (3,4)}; IoU with the 4-pixel mask = 1 / 5
    assert math.isclose(quantile_iou(m, MASK, 0.90), 1 / 5)
    # top 5 % = 1 pixel: {(0,0)}; IoU = 1 / 4
    assert math.isclose(quantile_iou(m, MASK, 0.95), 1 / 4)
    # top 2.5 % of 20 pixels rounds up to 1 pixel as well
    assert math.isclose(quantile_iou(m, MASK, 0.975), 1 / 4)
    assert pointing(m, MASK) == 1.0
    assert math.isclose(mass(m, MASK), (5 + 3) / 13)


def test_pointing_miss_and_degenerate_maps():
    m = torch.zeros(4, 5, dtype=torch.float64)
    m[3, 3] = 1.0
    assert pointing(m, MASK) == 0.0 and mass(m, MASK) == 0.0
    zero = torch.zeros(4, 5, dtype=torch.float64)
    assert mass(zero, MASK) == 0.0
    # a constant map selects every pixel: IoU = |mask| / N
    assert math.isclose(quantile_iou(zero, MASK, 0.9), 4 / 20)
    assert math.isnan(average_precision(m, torch.zeros(4, 5, dtype=torch.bool)))
    with pytest.raises(ValueError, match="differ in shape"):
        mass(torch.zeros(2, 2), MASK)


# ----------------------------------------------------------------------------- protocol variants


def test_every_metric_is_scored_and_named():
    from convex_attention.paper.explain_metrics import METRIC_NAMES

    s = score_map(MASK.double(), MASK)
    assert list(s) == list(METRIC_NAMES)
    assert {"qiou_strict@0.9", "qiou_strict@0.95", "qiou_strict@0.975", "pointing_tol"} <= set(s)


def test_strict_quantile_iou_is_the_authors_variant():
    from convex_attention.paper.explain_metrics import quantile_iou_strict

    # a constant map: every pixel ties with np.quantile, so '>' selects nothing (ties-included selects all)
    zero = torch.zeros(4, 5, dtype=torch.float64)
    assert quantile_iou_strict(zero, MASK, 0.9) == 0.0 and math.isclose(quantile_iou(zero, MASK, 0.9), 4 / 20)
    m = torch.arange(20, dtype=torch.float64).reshape(4, 5)
    m[0, 0], m[0, 1] = 100.0, 99.0  # two mask pixels on top
    # np.quantile(values, 0.9) interpolates between the 18th and 19th of 20 sorted values: '>' keeps the top 2
    values = m.numpy().ravel()
    assert (values > np.quantile(values, 0.9)).sum() == 2
    assert math.isclose(quantile_iou_strict(m, MASK, 0.9), 2 / 4)
    assert math.isclose(quantile_iou_strict(m, MASK, 0.975), 1 / 4)


def test_pointing_with_tolerance():
    from convex_attention.paper.explain_metrics import (
        pointing_tolerance,
        pointing_tolerance_px,
    )

    assert pointing_tolerance_px((240, 240)) == 15.0 and pointing_tolerance_px((128, 128)) == 8.0
    assert pointing_tolerance_px((64, 32)) == 4.0
    m = torch.zeros(4, 5, dtype=torch.float64)
    m[1, 4] = 1.0  # three columns right of the mask pixel (1, 1)
    assert pointing(m, MASK) == 0.0
    assert pointing_tolerance(m, MASK, 3.0) == 1.0 and pointing_tolerance(m, MASK, 2.9) == 0.0
    m[3, 4] = 2.0  # distance to (1, 1): sqrt(4 + 9) = 3.606
    assert pointing_tolerance(m, MASK, 3.61) == 1.0 and pointing_tolerance(m, MASK, 3.6) == 0.0
    assert pointing_tolerance(MASK.double(), MASK, 0.0) == 1.0
    assert math.isnan(pointing_tolerance(m, torch.zeros(4, 5, dtype=torch.bool), 1.0))
    # the default tolerance scales with the image: 15 px at 240, so 0.25 px on this 4x5 image
    assert pointing_tolerance(m, MASK) == 0.0


def test_bilinear_upsampling_and_its_check():
    coarse = torch.tensor([[0.0, 4.0]])
    near = to_common_form(coarse, (1, 4), "nearest")
    bil = to_common_form(coarse, (1, 4), "bilinear")
    assert torch.equal(near, torch.tensor([[0.0, 0.0, 4.0, 4.0]], dtype=torch.float64))
    assert torch.allclose(bil, torch.tensor([[0.0, 1.0, 3.0, 4.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="upsampling must be one of nearest, bilinear"):
        to_common_form(coarse, (1, 4), "bicubic")


def test_pooled_protocol_by_hand():
    from convex_attention.paper.explain_metrics import pooled_form

    attr = torch.zeros(2, 4, 4, dtype=torch.float64)
    attr[0, 0, 0] = 5.0   # channel 0: min 0, max 5 -> 1 at (0, 0)
    attr[1] = -2.0
    attr[1, 3, 3] = 2.0   # channel 1: min -2, max 2 -> 1 at (3, 3), 0 elsewhere
    pooled = pooled_form(attr, (2, 2), normalise=True)
    e = math.e
    total = 14 + 2 * e
    expected = torch.tensor([[(3 + e) / total, 4 / total], [4 / total, (3 + e) / total]], dtype=torch.float64)
    assert torch.allclose(pooled, expected) and math.isclose(float(pooled.sum()), 1.0)
    # attention maps are used as they are: sum-pooling only (their mass is kept)
    p = torch.full((4, 4), 1 / 16, dtype=torch.float64)
    p[0, 0] += 0.5
    assert torch.allclose(pooled_form(p, (2, 2), normalise=False),
                          torch.tensor([[0.75, 0.25], [0.25, 0.25]], dtype=torch.float64))
    assert torch.equal(pooled_form(p, (4, 4), normalise=False), p)
    with pytest.raises(ValueError, match="cannot be sum-pooled"):
        pooled_form(p, (8, 8), normalise=False)
    with pytest.raises(ValueError, match="cannot be sum-pooled"):
        pooled_form(p, (3, 3), normalise=False)


def test_the_block_map_is_the_best_map_on_its_grid():
    from convex_attention.paper.explain_metrics import block_map

    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[1:4, 2:7] = True
    best = block_map(mask, (4, 4))
    assert float(best.sum()) == mask.sum() and best[0, 1] == 2 and best[0, 0] == 0
    best_ap = average_precision(to_common_form(best, (8, 8)), mask)
    for _ in range(20):  # no other map constant on the 4x4 cells ranks the pixels better
        other = torch.rand(4, 4, generator=g, dtype=torch.float64)
        assert average_precision(to_common_form(other, (8, 8)), mask) <= best_ap + 1e-12
    assert average_precision(to_common_form(mask.double(), (8, 8)), mask) == 1.0


def test_average_precision_is_scikit_learns():
    from sklearn.metrics import average_precision_score

    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        m = torch.randint(0, 5 if trial % 2 else 1000, (12, 10), generator=g).double()  # heavy ties, then few
        mask = torch.rand(12, 10, generator=g) < 0.2
        if not mask.any():
            continue
        expected = average_precision_score(mask.numpy().ravel(), m.numpy().ravel())
        assert math.isclose(average_precision(m, mask), expected, rel_tol=1e-12, abs_tol=1e-15)
