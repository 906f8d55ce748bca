import math

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
    assert torch.equal(to_common_form(torch.tensor([[-1.0, 2.0]]), (1, 2)), torch.tensor([[0.0, 2.0]], dtype=torch.float64))
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
