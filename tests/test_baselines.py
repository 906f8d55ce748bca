import torch

import convex_attention as ca
from convex_attention.baselines.attributions import BASELINES, gradcam
from convex_attention.baselines.paper_loss import paper_code_consistency_loss
from convex_attention.paper.models import AttentionUNet


def test_every_attribution_has_the_expected_shape_and_is_finite():
    torch.manual_seed(0)
    model = AttentionUNet(method="softmax", width=4, image_size=32, embed_channels=8)
    images, targets = torch.randn(2, 4, 32, 32), torch.tensor([1, 1])
    for level, side in ((0, 8), (1, 4)):
        cam = gradcam(model, images, targets, level)
        assert cam.shape == (2, side, side) and (cam >= 0).all()
    for name, fn in BASELINES.items():
        attr = fn(model, images.clone().requires_grad_(), targets)
        assert attr.shape == (2, 4, 32, 32) and torch.isfinite(attr).all(), name
        assert attr.abs().sum() > 0, name


def test_attributions_work_on_a_learned_dual_model_too():
    model = AttentionUNet(method="learned_dual", width=4, image_size=32, embed_channels=8)
    images, targets = torch.randn(1, 4, 32, 32), torch.tensor([1])
    assert BASELINES["lrp"](model, images, targets).shape == (1, 4, 32, 32)


def test_paper_code_loss_differs_from_per_sample_normalisation_except_for_one_sample():
    g = torch.Generator().manual_seed(0)
    theta0 = torch.randn(4, 8, 8, generator=g, dtype=torch.float64)
    theta1 = torch.randn(4, 4, 4, generator=g, dtype=torch.float64)
    lam = torch.randn(4, 4, generator=g, dtype=torch.float64)
    h = ca.Hierarchy.grid([(8, 8), (4, 4)])
    ours = ca.consistency_loss([theta0, theta1], [lam], h)
    theirs = paper_code_consistency_loss(theta0, theta1, lam)
    assert not torch.isclose(ours, theirs, rtol=1e-3)
    one = ca.consistency_loss([theta0[:1], theta1[:1]], [lam], h)
    torch.testing.assert_close(one, paper_code_consistency_loss(theta0[:1], theta1[:1], lam))
