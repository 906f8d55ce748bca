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


def test_the_block_map_counts_the_lesion_pixels_of_each_cell():
    from convex_attention.paper.explain_metrics import block_map

    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[1:4, 2:7] = True
    best = block_map(mask, (4, 4))
    # the lesion pixels per cell, ties broken by offsets below 1 (cells without lesion pixels stay at 0)
    assert torch.equal(best.floor(), torch.tensor([[0, 2, 2, 1], [0, 4, 4, 2], [0, 0, 0, 0], [0, 0, 0, 0]],
                                                  dtype=torch.float64))
    assert best[0, 0] == 0 and float(best.sum()) < mask.sum() + 0.5
    best_ap = average_precision(to_common_form(best, (8, 8)), mask)
    for _ in range(20):  # no other map constant on the 4x4 cells ranks the pixels better
        other = torch.rand(4, 4, generator=g, dtype=torch.float64)
        assert average_precision(to_common_form(other, (8, 8)), mask) <= best_ap + 1e-12
    assert average_precision(to_common_form(mask.double(), (8, 8)), mask) == 1.0


def _every_order_with_ties(n_cells: int):
    """Every weak order of ``n_cells`` cells (every map of cell values in 0 .. n_cells − 1):
    strict orders and every way of tying cells at one threshold."""
    import itertools

    return itertools.product(range(n_cells), repeat=n_cells)


@pytest.mark.parametrize("shape, grid, cells", [
    # the review's case: cells of 16, 2 and 2 lesion pixels of 16 (tied at one threshold, the plain counts scored
    # 0.883 against 0.898 ranked)
    ((8, 8), (2, 2), {(0, 0): [(r, c) for r in range(4) for c in range(4)], (0, 1): [(0, 4), (0, 5)],
                      (1, 1): [(4, 4), (4, 5)]}),
    # three cells tied at 3 of 4 pixels after one of 4, and a cell of 1
    ((2, 10), (1, 5), {(0, 0): [(0, 0), (0, 1), (1, 0), (1, 1)], (0, 1): [(0, 2), (0, 3), (1, 2)],
                       (0, 2): [(0, 4), (1, 4), (1, 5)], (0, 3): [(0, 6), (0, 7), (1, 7)], (0, 4): [(1, 9)]}),
    # two pairs of ties
    ((2, 10), (1, 5), {(0, 0): [(0, 0), (1, 1)], (0, 1): [(0, 2)], (0, 2): [(0, 4), (1, 5)], (0, 3): [(1, 7)]}),
])
def test_the_block_map_is_the_best_map_on_its_grid(shape, grid, cells):
    """Exhaustive: every order of the cells, with every way of tying them, scores at most the
    block map's ap; with its ties left in, the block map would not be the best."""
    from convex_attention.paper.explain_metrics import block_map

    mask = torch.zeros(shape, dtype=torch.bool)
    for pixels in cells.values():
        for r, c in pixels:
            mask[r, c] = True
    best = block_map(mask, grid)
    best_ap = average_precision(to_common_form(best, shape), mask)
    n_cells = grid[0] * grid[1]
    scored = [average_precision(to_common_form(torch.tensor(order, dtype=torch.float64).reshape(grid), shape), mask)
              for order in _every_order_with_ties(n_cells)]
    assert max(scored) <= best_ap + 1e-12
    assert math.isclose(best_ap, max(scored), rel_tol=1e-12)  # the best of them: the block map reaches it
    # the plain counts (ties left in) score less where tied cells hold lesion pixels
    counts = best.floor()
    assert average_precision(to_common_form(counts, shape), mask) < best_ap - 1e-3
    # ties are broken strictly, the first cell in row-major order ranked first
    flat = best.flatten()
    for i in range(n_cells):
        for j in range(i + 1, n_cells):
            if counts.flatten()[i] == counts.flatten()[j] > 0:
                assert flat[i] > flat[j]


def test_the_block_map_pooled_to_a_coarser_grid_keeps_the_order_of_the_counts():
    """The offsets that break ties sum to less than 1, so a block map sum-pooled to a
    coarser grid (the pooled protocol) still orders cells of different counts by count."""
    from convex_attention.paper.explain_metrics import block_map, pooled_form

    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        mask = torch.rand(16, 16, generator=g) < 0.3
        fine = block_map(mask, (8, 8))
        coarse_counts = block_map(mask, (2, 2)).floor().flatten()
        pooled = pooled_form(fine, (2, 2), normalise=False).flatten()
        for i in range(4):
            for j in range(4):
                if coarse_counts[i] > coarse_counts[j]:
                    assert pooled[i] > pooled[j]


def test_pointing_breaks_ties_for_the_top_at_random_in_expectation():
    from convex_attention.paper.explain_metrics import pointing_tolerance

    # a 2x2 grid map upsampled by nearest neighbour to 4x4: its best cell ties four pixels
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[1, 1] = True  # one of the best cell's four pixels, not its top-left one
    coarse = torch.tensor([[5.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    up = to_common_form(coarse, (4, 4), "nearest")
    assert pointing(up, mask) == 0.25  # the first maximal pixel, (0, 0), would miss: 0
    mask[0, 0] = True
    assert pointing(up, mask) == 0.5
    # a constant map: every pixel ties, so the score is the chance level (the mask's pixel share)
    assert pointing(torch.zeros(4, 4, dtype=torch.float64), mask) == 2 / 16
    assert math.isclose(pointing(torch.zeros(4, 5, dtype=torch.float64), MASK), 4 / 20)
    # one top pixel: the indicator, as before
    single = up.clone()
    single[1, 1] = 6.0
    assert pointing(single, mask) == 1.0
    single[1, 1], single[3, 3] = 5.0, 6.0
    assert pointing(single, mask) == 0.0
    # within a tolerance: the share of the tied top pixels within it of the mask
    far = torch.zeros(1, 10, dtype=torch.bool)
    far[0, 0] = True
    line = torch.zeros(1, 10, dtype=torch.float64)
    line[0, 2:6] = 1.0  # tied top pixels at distances 2, 3, 4 and 5 from the mask pixel
    assert pointing_tolerance(line, far, 3.0) == 0.5 and pointing_tolerance(line, far, 5.0) == 1.0
    assert pointing_tolerance(line, far, 1.5) == 0.0
    assert math.isclose(pointing_tolerance(torch.zeros(1, 10, dtype=torch.float64), far, 2.0), 3 / 10)


def test_pointing_of_a_bilinear_map_with_its_top_on_the_border():
    """Bilinear upsampling (align_corners=False) repeats a border cell's value over the
    pixels before the first cell centre: a corner cell's top ties a 2x2 block at 4x."""
    coarse = torch.tensor([[4.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    up = to_common_form(coarse, (8, 8), "bilinear")
    top = up == up.max()
    assert int(top.sum()) == 4 and bool(top[:2, :2].all())
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[1, 1] = True
    assert pointing(up, mask) == 0.25


def test_every_metric_of_an_empty_mask_is_nan():
    empty = torch.zeros(4, 5, dtype=torch.bool)
    m = torch.rand(4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name, value in score_map(m, empty).items():
        assert math.isnan(value), name
    for name, value in score_map(torch.zeros(4, 5, dtype=torch.float64), empty, tolerance=1.0).items():
        assert math.isnan(value), name


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_map_that_is_not_finite_is_refused(bad):
    from convex_attention.paper.explain_metrics import pointing_tolerance, quantile_iou_strict

    m = torch.rand(4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m[0, 0] = bad
    for score in (lambda: score_map(m, MASK), lambda: score_map(m, torch.zeros(4, 5, dtype=torch.bool)),
                  lambda: average_precision(m, MASK), lambda: quantile_iou(m, MASK, 0.9),
                  lambda: quantile_iou_strict(m, MASK, 0.9), lambda: pointing(m, MASK),
                  lambda: pointing_tolerance(m, MASK), lambda: mass(m, MASK)):
        with pytest.raises(ValueError, match="NaN or Inf"):
            score()


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


# ----------------------------------------------------------------------------- mutation-testing additions
# Expected values below are worked by hand (or by a brute force / scikit-learn / numpy oracle),
# never read back from the module under test.


def test_common_form_clips_after_upsampling_and_refuses_other_ranks():
    """The map is brought to the image grid, then made non-negative (module docstring): a
    bilinear ramp from −4 to 4 keeps its interpolated ramp, clipped below 0."""
    # align_corners=False, 2 -> 4 pixels: sample positions −0.25, 0.25, 0.75, 1.25 (clamped to
    # [0, 1]) give −4, −2, 2, 4; clipped: 0, 0, 2, 4 (clipping first would give 0, 1, 3, 4)
    up = to_common_form(torch.tensor([[-4.0, 4.0]]), (1, 4), "bilinear")
    assert torch.allclose(up, torch.tensor([[0.0, 0.0, 2.0, 4.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"must be \(h, w\) or \(C, h, w\)"):
        to_common_form(torch.zeros(1, 1, 2, 2), (2, 2))
    with pytest.raises(ValueError, match=r"must be \(h, w\) or \(C, h, w\)"):
        to_common_form(torch.zeros(1, 2, 2, 2), (2, 2))


def test_pooled_form_refuses_a_grid_that_does_not_divide_the_rows():
    from convex_attention.paper.explain_metrics import pooled_form

    with pytest.raises(ValueError, match="cannot be sum-pooled"):
        pooled_form(torch.ones(4, 4, dtype=torch.float64), (3, 2), normalise=False)


def test_pooled_form_min_max_scales_every_channel_to_one_and_zeroes_a_constant_one():
    """Per-channel min-max normalisation: a constant channel becomes zeros (docstring), a
    channel of span 0.5 is stretched to [0, 1]; then the softmax over all cells."""
    from convex_attention.paper.explain_metrics import pooled_form

    attr = torch.empty(2, 2, 2, dtype=torch.float64)
    attr[0] = 7.0                                         # constant -> 0 everywhere
    attr[1] = torch.tensor([[0.0, 0.5], [0.25, 0.5]])     # span 0.5 -> [[0, 1], [0.5, 1]]
    e = math.e
    total = 1 + 2 * e + math.sqrt(e)
    expected = torch.tensor([[1 / total, e / total], [math.sqrt(e) / total, e / total]], dtype=torch.float64)
    pooled = pooled_form(attr, (2, 2), normalise=True)
    assert torch.isfinite(pooled).all()
    assert torch.allclose(pooled, expected, rtol=1e-12, atol=0)


def test_the_block_map_offsets_are_exactly_the_documented_ones():
    """Cell ``i`` (row-major) of the ``n`` cells gets ``(n − 1 − i) / n²`` when it holds
    lesion pixels (block_map's docstring); ``mass`` reads these values."""
    from convex_attention.paper.explain_metrics import block_map

    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 0] = True               # cell (0, 0): 1 lesion pixel
    mask[0, 2:4] = True             # cell (0, 1): 2
    mask[2:4, 0] = True             # cell (1, 0): 2 (tied with (0, 1): row-major puts (0, 1) first)
    # n = 4: offsets 3/16, 2/16, 1/16, 0 for cells 0..3; cell (1, 1) holds none and stays 0
    expected = torch.tensor([[1 + 3 / 16, 2 + 2 / 16], [2 + 1 / 16, 0.0]], dtype=torch.float64)
    assert torch.equal(block_map(mask, (2, 2)), expected)
    # a 1x3 grid of a 2x6 mask, every cell tied at 1: n = 3, offsets 2/9, 1/9, 0
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 0] = mask[1, 3] = mask[0, 5] = True
    assert torch.allclose(block_map(mask, (1, 3)),
                          torch.tensor([[1 + 2 / 9, 1 + 1 / 9, 1.0]], dtype=torch.float64), rtol=1e-15, atol=0)


def test_quantile_iou_takes_the_top_share_rounded_up():
    """``qiou@q`` selects the pixels at or above the map's q-quantile: at least the top
    ``1 − q`` of pixels.  On 26 distinct values the top 5 % is 1.3 pixels, so 2 pixels;
    the top 10 % is 2.6 pixels, so 3."""
    m = torch.arange(26, dtype=torch.float64).reshape(2, 13)
    mask = torch.zeros(2, 13, dtype=torch.bool)
    mask[1, 12] = True  # the top pixel only
    values = m.numpy().ravel()
    # numpy's (linear) q-quantile agrees on this example: 23.75 and 22.5
    assert (values >= np.quantile(values, 0.95)).sum() == 2 and (values >= np.quantile(values, 0.90)).sum() == 3
    assert math.isclose(quantile_iou(m, mask, 0.95), 1 / 2)
    assert math.isclose(quantile_iou(m, mask, 0.90), 1 / 3)
    assert math.isclose(quantile_iou(m, mask, 0.975), 1 / 1)  # 0.65 pixels -> 1


def test_quantile_iou_against_a_brute_force_oracle():
    """Random small maps with heavy ties: k = the least integer ≥ (1 − q)·N (exact
    fractions), the threshold is the k-th largest value, ties with it included."""
    from fractions import Fraction

    rng = np.random.default_rng(0)
    for trial in range(200):
        h, w = int(rng.integers(1, 7)), int(rng.integers(1, 9))
        values = rng.integers(0, 3 if trial % 2 else 50, size=(h, w)).astype(np.float64)
        truth = rng.random((h, w)) < 0.3
        if not truth.any():
            truth[0, 0] = True
        for q in (0.90, 0.95, 0.975):
            n = h * w
            share = (1 - Fraction(str(q))) * n
            k = max(1, -(-share.numerator // share.denominator))
            threshold = sorted(values.ravel(), reverse=True)[k - 1]
            top = values >= threshold
            expected = (top & truth).sum() / (top | truth).sum()
            got = quantile_iou(torch.from_numpy(values), torch.from_numpy(truth), q)
            assert math.isclose(got, expected, rel_tol=1e-12), (trial, q)


def test_pointing_tolerance_px_is_not_rounded():
    from convex_attention.paper.explain_metrics import pointing_tolerance_px

    assert pointing_tolerance_px((100, 100)) == 15 * 100 / 240 == 6.25
    assert pointing_tolerance_px((60, 100)) == 6.25


def test_a_zero_tolerance_is_exact_pointing_not_the_default():
    from convex_attention.paper.explain_metrics import pointing_tolerance, pointing_tolerance_px

    mask = torch.zeros(48, 48, dtype=torch.bool)
    mask[0, 0] = True
    m = torch.zeros(48, 48, dtype=torch.float64)
    m[0, 2] = 1.0  # 2 px from the mask; the default tolerance at 48 x 48 is 3 px
    assert pointing_tolerance_px((48, 48)) == 3.0
    assert pointing_tolerance(m, mask) == 1.0
    assert pointing_tolerance(m, mask, 0.0) == 0.0
    assert pointing_tolerance(m, mask, 2.0) == 1.0


def test_score_map_reports_each_metric_under_its_own_name():
    """score_map wires every metric to its name, with its own q and the given tolerance."""
    from sklearn.metrics import average_precision_score

    m = torch.zeros(4, 5, dtype=torch.float64)
    m[0, 2] = 4.0  # outside the mask, 1 px from its pixel (0, 1): the single top pixel
    m[0, 0] = 3.0  # in the mask
    m[1, 1] = 3.0  # in the mask (tied with (0, 0))
    m[3, 4] = 1.0  # outside
    s = score_map(m, MASK, tolerance=1.0)
    # ranking 4 (miss), {3, 3} (2 hits, one threshold), 1 (miss), 16 zeros (2 hits):
    # ap = 2/4 · 2/3 + 2/4 · 4/20
    assert math.isclose(s["ap"], 2 / 4 * 2 / 3 + 2 / 4 * 4 / 20, rel_tol=1e-12)
    assert math.isclose(s["ap"], average_precision_score(MASK.numpy().ravel(), m.numpy().ravel()), rel_tol=1e-12)
    # q=0.9: top 2 pixels -> threshold 3, ties included: {4, 3, 3}: 2 hits, union 5
    assert math.isclose(s["qiou@0.9"], 2 / 5)
    # q=0.95 and 0.975: top 1 pixel, the miss
    assert s["qiou@0.95"] == 0.0 and s["qiou@0.975"] == 0.0
    # strict: np.quantile(., 0.9) = 3 (position 17.1 between two 3s), '>' keeps only the 4
    assert s["qiou_strict@0.9"] == 0.0 and s["qiou_strict@0.95"] == 0.0 and s["qiou_strict@0.975"] == 0.0
    assert s["pointing"] == 0.0          # the top pixel misses
    assert s["pointing_tol"] == 1.0      # ... but lies 1 px from the mask, within the given tolerance
    assert math.isclose(s["mass"], 6 / 11)
    # the default tolerance at 4 x 5 is 0.3125 px: the top pixel is outside it
    assert score_map(m, MASK)["pointing_tol"] == 0.0
    # a map where strict and tie-including q-IoU differ at every q: a perfect map plus a tie
    t = MASK.double()
    t[3, 4] = 1.0  # 5 tied top pixels, 4 of them in the mask
    s = score_map(t, MASK)
    for q in ("0.9", "0.95", "0.975"):
        assert math.isclose(s[f"qiou@{q}"], 4 / 5)        # ties with the threshold included
        assert s[f"qiou_strict@{q}"] == 0.0              # np.quantile is 1 at each q: nothing is strictly above
    assert math.isclose(s["pointing"], 4 / 5) and math.isclose(s["mass"], 4 / 5)


# ----------------------------------------------------------------------------- review 35 (strict xfail: known defects)


def test_rev35_a_map_holding_minus_inf_is_refused_through_the_common_form():
    from convex_attention.paper.explain_metrics import pooled_form

    m = torch.rand(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m[0, 0] = -math.inf
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:2, :2] = True
    for score in (lambda: score_map(to_common_form(m, (8, 8), "nearest"), mask),
                  lambda: score_map(to_common_form(m, (8, 8), "bilinear"), mask),
                  lambda: score_map(to_common_form(pooled_form(m, (2, 2), normalise=False), (8, 8)), mask)):
        with pytest.raises(ValueError, match="NaN or Inf"):
            score()


def test_rev35_metrics_do_not_depend_on_a_float16_map_dtype():
    g = torch.Generator().manual_seed(0)
    m = (torch.rand(128, 128, generator=g, dtype=torch.float64) * 10).half()
    mask = torch.zeros(128, 128, dtype=torch.bool)
    mask[:64] = True
    low, high = score_map(m, mask), score_map(m.double(), mask)  # the same values, only the dtype differs
    for name in high:
        assert math.isclose(low[name], high[name], rel_tol=1e-9, abs_tol=1e-12), name


# ----------------------------------------------------------------------------- review ca_rev69


def test_ca_rev69_a_tolerance_that_is_not_a_distance_is_refused():
    m = torch.zeros(8, 8, dtype=torch.float64)
    m[0, 0] = 1.0  # the top pixel lies in the mask: any tolerance >= 0 is a hit
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[0, 0] = True
    assert score_map(m, mask, tolerance=0.0)["pointing_tol"] == 1.0
    for bad in (math.nan, -1.0):
        with pytest.raises(ValueError):
            score_map(m, mask, tolerance=bad)  # it gives pointing_tol 0.0 for both


def test_ca_rev69_quantile_iou_refuses_a_quantile_outside_0_1():
    from convex_attention.paper.explain_metrics import quantile_iou, quantile_iou_strict

    m = torch.arange(16.0, dtype=torch.float64).reshape(4, 4)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 0] = True
    with pytest.raises(ValueError):
        quantile_iou_strict(m, mask, -0.5)  # the authors' variant refuses it (numpy)
    with pytest.raises(ValueError):
        quantile_iou(m, mask, -0.5)  # it gives 0.0: the top "150 %" read as the 8 largest pixels


def test_ca_rev71_the_strict_q_iou_refuses_a_quantile_outside_0_1_as_q_iou_does():
    from convex_attention.paper.explain_metrics import quantile_iou_strict

    m = torch.arange(20, dtype=torch.float32).reshape(4, 5)
    with pytest.raises(ValueError):
        quantile_iou(m, MASK, 1.0)
    with pytest.raises(ValueError):
        quantile_iou_strict(m, MASK, 1.0)  # every pixel strictly above the max: none; IoU 0.0


def test_mass_and_score_map_refuse_a_signed_map_whose_share_is_no_share():
    """A signed map's "share inside the mask" passed 1 (here 5.0): mass is defined on the non-negative
    common form only, which to_common_form gives any map."""
    m = torch.zeros(4, 5, dtype=torch.float64)
    m[0, 0], m[3, 4] = 4.0, -3.2  # inside 4, total 0.8
    with pytest.raises(ValueError, match="non-negative"):
        mass(m, MASK)
    with pytest.raises(ValueError, match="non-negative"):
        score_map(m, MASK)
    assert mass(to_common_form(m, (4, 5)), MASK) == 1.0


# ---- ca_rev135 (strict xfail: review of a7365f0)
def test_ca_rev135_nearest_upsampling_assigns_each_pixel_the_cell_holding_its_centre():
    m = torch.tensor([[0.0, 1.0, 2.0]]).repeat(3, 1)
    up = to_common_form(m, (7, 7), "nearest")
    # pixel i's centre (i + 0.5) * 3 / 7 lies in cell floor((i + 0.5) * 3 / 7): widths 2, 3, 2 (symmetric)
    assert up[0].tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 2.0]
    assert torch.equal(to_common_form(m.flip(1), (7, 7), "nearest"), up.flip(1))  # mirroring commutes


def test_ca_rev135_the_pooled_block_map_reference_is_the_best_map_on_the_coarser_grid():
    from convex_attention.paper.explain import reference_maps, score_explanations
    from convex_attention.paper.explain_metrics import block_map

    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[4:8, 0:4] = True  # one coarse cell full
    mask[0, 2] = mask[2, 0] = True  # coarse cell (0, 0): 2 lesion pixels, in fine cells 1 and 4
    mask[0, 4] = mask[0, 6] = True  # coarse cell (0, 1): 2 lesion pixels, in fine cells 2 and 3
    grids = [(4, 4), (2, 2)]
    best = average_precision(to_common_form(block_map(mask, (2, 2)), (8, 8)), mask)
    assert best == pytest.approx(0.8979166666666667)  # ranked; the two 2-pixel cells tied give 0.8833
    rows = score_explanations(reference_maps(torch.zeros(1, 1, 8, 8), mask[None], grids), mask[None], grids,
                              pooled=True)
    pooled = {r["level"]: r["ap"] for r in rows if r["resolution"] == "2x2"}
    assert pooled[1] == pytest.approx(best)
    assert pooled[0] == pytest.approx(best)  # the level-0 block map pooled to 2x2 is a 2x2 block map too


# ---- ca_rev180 (review of 076687c; its strict xfail now passes)
@pytest.mark.parametrize("upsampling", ["nearest", "bilinear"])
def test_ca_rev180_a_map_finer_than_the_image_is_refused_or_keeps_its_mass(upsampling):
    m = torch.zeros(32, 32, dtype=torch.float64)
    m[0, 0] = 1.0  # the map's only mass, inside image pixel (0, 0) (4x4 fine pixels per image pixel)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[0, 0] = True
    try:
        common = to_common_form(m, (8, 8), upsampling)
    except ValueError:
        return  # refused: a map finer than the image is not brought to it by sampling its pixels
    assert common.sum() > 0  # now 0.0: every image pixel samples fine pixels other than (0, 0)
    assert score_map(common, mask)["ap"] == 1.0  # now 1/64, the chance level of the all-zero map it became


# ---- ca_rev207 (mutation review of 0c62772)


@pytest.mark.parametrize("shape", [(20, 8), (8, 20)])
def test_ca_rev207_a_map_finer_than_the_image_in_one_dimension_only_is_refused(shape):
    """Kills the refusal of a too-fine map asking *both* dimensions to be finer (``and`` for
    ``or``): a 20 x 8 map on a 16 x 16 image would lose 4 of its rows to the interpolation."""
    with pytest.raises(ValueError, match="finer than"):
        to_common_form(torch.rand(shape), (16, 16))


def test_ca_rev207_pointing_counts_only_the_exact_maximum():
    """Kills the pointing game's top taken within a relative tolerance of the maximum: a
    pixel one part in 1e12 below the top is not tied with it (brute force: the argmax)."""
    from convex_attention.paper.explain_metrics import pointing_tolerance

    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 0] = True
    m = torch.zeros(4, 4, dtype=torch.float64)
    m[0, 0], m[3, 3] = 1.0 - 1e-12, 1.0
    assert pointing(m, mask) == float(mask.flatten()[int(m.flatten().argmax())]) == 0.0
    assert pointing_tolerance(m, mask, tolerance=0.0) == 0.0


def test_ca_rev207_mass_refuses_any_negative_value():
    """Kills a negative-value refusal with a slack (``min() < -1e-9``): a map holding -1e-12
    is signed, and its share of mass is no share."""
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 0] = True
    m = torch.ones(4, 4, dtype=torch.float64)
    m[1, 1] = -1e-12
    with pytest.raises(ValueError, match="negative"):
        mass(m, mask)


def test_ca_rev207_the_default_tolerance_of_a_wide_image_scales_with_its_longer_side():
    """Kills ``pointing_tolerance`` defaulting to the tolerance of the image's height alone:
    at 16 x 48 the default is 15 * 48 / 240 = 3 px, so a top 3 px right of the mask is
    within it (1 px, the height's, would miss).  Brute force: the Euclidean distance."""
    from convex_attention.paper.explain_metrics import pointing_tolerance

    mask = torch.zeros(16, 48, dtype=torch.bool)
    mask[8, 10] = True
    m = torch.zeros(16, 48, dtype=torch.float64)
    m[8, 13] = 1.0  # distance 3
    assert pointing_tolerance(m, mask) == 1.0 == pointing_tolerance(m, mask, tolerance=3.0)
    m[8, 13], m[8, 14] = 0.0, 1.0  # distance 4
    assert pointing_tolerance(m, mask) == 0.0


# ---- ca_rev232 (design.md §1-3, §5, §6 audit): q-IoU's top share with ties

def test_ca_rev232_qiou_of_a_nearest_upsampled_coarse_map_takes_the_whole_tied_top_cell():
    """design.md §6 reads ``qiou@0.9`` as the IoU of the top 10 % of pixels with the mask; the code takes every pixel
    at or above the ⌈10 %⌉-th largest value (ties included).  A 2 x 2 map upsampled by nearest neighbour to 8 x 8:
    its best cell is 16 pixels (25 %), all tied, so the top set is that cell.  By hand: a mask of 8 pixels inside it
    scores 8 / 16 = 0.5 (7 pixels, 10 %, could score at most 7 / 8)."""
    coarse = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]], dtype=torch.float64)
    m = to_common_form(coarse, (8, 8))
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[4:, 4:6] = True
    top = m >= m.max()
    assert int(top.sum()) == 16
    want = float((top & mask).sum()) / float((top | mask).sum())
    assert want == 0.5
    for q in (0.9, 0.95, 0.975):
        assert math.isclose(quantile_iou(m, mask, q), want, rel_tol=0, abs_tol=1e-15)


# ---- ca_rev246 (hostile review of explain_metrics / validity statistics)

def test_ca_rev246_mass_of_a_finite_map_whose_sum_overflows_is_still_its_share():
    """Two pixels of 1e308 sum to Inf in float64: mass read 0.0 (half inside) and NaN (all inside)."""
    m = torch.tensor([[1e308, 1e308], [0.0, 0.0]], dtype=torch.float64)
    half = torch.tensor([[True, False], [False, False]])
    assert mass(m, half) == pytest.approx(0.5)
    assert mass(m, torch.tensor([[True, True], [False, False]])) == pytest.approx(1.0)
    assert mass(m * 1e-4, half) == pytest.approx(0.5)  # the same map, scaled to a finite sum
    assert score_map(m, half)["mass"] == pytest.approx(0.5)


def test_ca_rev246_the_block_map_counts_the_pixels_the_metrics_read_as_lesion():
    """The metrics read a mask as bool; the block map summed its values, so a soft mask ranked a cell of one
    full pixel above a cell of two pixels at 0.2 (ap 0.333 where the best map scores 41/96 = 0.427)."""
    from convex_attention.paper.explain_metrics import block_map

    soft = torch.zeros(4, 4)
    soft[0, 0], soft[0, 2], soft[0, 3], soft[2, 0] = 1.0, 0.2, 0.2, 0.2
    for mask in (soft, soft * 255, -soft):
        best = block_map(mask, (2, 2))
        assert torch.equal(best, block_map(mask != 0, (2, 2)))
        assert average_precision(to_common_form(best, (4, 4)), mask) == pytest.approx(41 / 96)


def test_ca_rev246_pointing_tolerance_against_a_brute_force_euclidean_distance():
    from convex_attention.paper.explain_metrics import pointing_tolerance

    rng = np.random.default_rng(246)
    for case in range(60):
        H, W = (int(s) for s in rng.integers(1, 9, 2)) if case % 3 else (int(rng.integers(8, 20)), 48)
        mask = rng.random((H, W)) < rng.choice([0.05, 0.3])
        mask.flat[rng.integers(H * W)] = True
        m = rng.integers(0, 3, (H, W)).astype(np.float64)  # ties for the top
        lesion = np.argwhere(mask)
        top = np.argwhere(m == m.max())
        distance = [min(math.hypot(r - a, c - b) for a, b in lesion) for r, c in top]
        for tol in (None, 0.0, 1.0, math.sqrt(2), math.sqrt(5), 2.9):
            radius = 15 * max(H, W) / 240 if tol is None else tol
            expected = np.mean([d <= radius for d in distance])
            assert pointing_tolerance(torch.tensor(m), torch.tensor(mask), tol) == pytest.approx(expected, abs=1e-12)


def test_ca_rev246_qiou_variants_and_pointing_against_brute_force_oracles():
    """q-IoU: the k = ceil((1 - q) N) largest values (q read as the decimal it is written as) with ties to
    the k-th; strict: above numpy's linear quantile, here computed by hand; pointing: the top's mask share."""
    from fractions import Fraction

    from convex_attention.paper.explain_metrics import quantile_iou_strict

    rng = np.random.default_rng(2461)
    for case in range(150):
        H, W = (int(s) for s in rng.integers(1, 9, 2))
        m = rng.integers(0, 3, (H, W)).astype(np.float64) if case % 2 else np.round(rng.normal(size=(H, W)), 1)
        mask = rng.random((H, W)) < rng.choice([0.1, 0.5, 1.0])
        mask.flat[rng.integers(H * W)] = True
        v, t, n = m.ravel(), mask.ravel(), m.size
        tm, tmask = torch.tensor(m, dtype=[torch.float64, torch.float32][case % 2]), torch.tensor(mask)
        for q in (0.0, 0.3, 0.9, 0.95, 0.975):
            k = max(1, math.ceil((1 - Fraction(str(q))) * n))
            top = v >= sorted(v, reverse=True)[k - 1]
            assert quantile_iou(tm, tmask, q) == pytest.approx((top & t).sum() / (top | t).sum(), abs=1e-12)
            s, pos = sorted(v), Fraction(str(q)) * (n - 1)
            lo = math.floor(pos)
            threshold = Fraction(s[lo]) + (Fraction(s[min(lo + 1, n - 1)]) - Fraction(s[lo])) * (pos - lo)
            strict = np.array([Fraction(x) > threshold for x in v])
            assert quantile_iou_strict(tm, tmask, q) == pytest.approx((strict & t).sum() / (strict | t).sum(),
                                                                      abs=1e-12)
        assert pointing(tm, tmask) == pytest.approx(t[v == v.max()].mean(), abs=1e-12)


def test_ca_rev246_a_grid_map_scores_as_on_the_grid_against_the_mask_pooled_with_cell_weights():
    """The pooled protocol's claim: the nearest-upsampled grid map's pixel ap is the grid map's ap with each
    cell weighted by its lesion and non-lesion pixel counts (scikit-learn's sample_weight)."""
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(2462)
    for _ in range(25):
        gh, gw, fh, fw = (int(s) for s in rng.integers(1, 5, 4))
        mask = rng.random((gh * fh, gw * fw)) < rng.choice([0.1, 0.5])
        mask.flat[rng.integers(mask.size)] = True
        grid = rng.integers(0, 3, (gh, gw)).astype(np.float64)
        lesion = mask.reshape(gh, fh, gw, fw).sum((1, 3)).ravel()
        weights = np.r_[lesion, fh * fw - lesion]
        keep = weights > 0
        expected = average_precision_score(np.r_[np.ones(lesion.size), np.zeros(lesion.size)][keep],
                                           np.r_[grid.ravel(), grid.ravel()][keep], sample_weight=weights[keep])
        got = average_precision(to_common_form(torch.tensor(grid), mask.shape), torch.tensor(mask))
        assert got == pytest.approx(expected, abs=1e-12)


def test_a_mask_holding_nan_is_refused_by_every_metric_and_the_block_map():
    """A NaN pixel is neither lesion nor background: ``!= 0`` had counted it as lesion (ca_rev246's risk)."""
    from convex_attention.paper.explain_metrics import block_map

    mask = torch.zeros(4, 4)
    mask[0, 0], mask[3, 3] = 1.0, math.nan
    m = torch.rand(4, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="mask holds 1 NaN"):
        score_map(m, mask)
    with pytest.raises(ValueError, match="mask holds 1 NaN"):
        block_map(mask, (2, 2))
    mask[3, 3] = 0.0  # the same mask without it is scored
    assert score_map(m, mask)["pointing"] in (0.0, 1.0)
