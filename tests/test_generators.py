import pytest
import torch

import convex_attention as ca
from convex_attention.bench.generators import generate


@pytest.mark.parametrize("name", ["gaussian", "lesion"])
def test_generators_are_seeded_and_shaped(name):
    h = ca.Hierarchy.grid([(16, 16), (8, 8), (4, 4)])
    a = generate(name, h, 3, seed=5, scale=2.0)
    b = generate(name, h, 3, seed=5, scale=2.0)
    c = generate(name, h, 3, seed=6, scale=2.0)
    assert [tuple(x.shape) for x in a] == [(3, 16, 16), (3, 8, 8), (3, 4, 4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert all(x.dtype == torch.float64 and torch.isfinite(x).all() for x in a)


def test_lesion_scores_are_peaked_and_agree_across_levels():
    h = ca.Hierarchy.grid([(32, 32), (16, 16)])
    s = generate("lesion", h, 8, seed=0)
    fine = s[0].flatten(1)
    assert ((fine.max(1).values - fine.median(1).values) > 1.5).all()  # blobs stand out of the noise
    pooled = h.aggregate(s[0], 0) / 4
    corr = torch.corrcoef(torch.stack([pooled.flatten(), s[1].flatten()]))[0, 1]
    assert corr > 0.5


def test_lesion_generator_on_3d_grids():
    h = ca.Hierarchy.grid([(8, 8, 8), (4, 4, 4)])
    s = generate("lesion", h, 2, seed=1)
    assert s[0].shape == (2, 8, 8, 8)


def test_unknown_generator():
    with pytest.raises(ValueError, match="unknown score generator"):
        generate("uniform", ca.Hierarchy.grid([(4,), (2,)]), 1)


@pytest.mark.parametrize("kwargs, message", [
    ({"batch": 0}, "batch must be a positive integer"),
    ({"batch": 2, "scale": float("inf")}, "scale must be positive and finite"),
    ({"batch": 2, "scale": float("nan")}, "scale must be positive and finite"),
    ({"batch": 2, "scale": -1.0}, "scale must be positive and finite"),
])
def test_generate_rejects_bad_batch_and_scale(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate("gaussian", ca.Hierarchy.grid([(4,), (2,)]), **kwargs)


@pytest.mark.parametrize("structure", ["star", "axial", "grid_regions", "mixed"])
def test_lesion_scores_on_graphs_agree_along_every_edge(structure):
    from convex_attention.bench.structures import structure_graph

    h = structure_graph(structure, 32)
    s = generate("lesion", h, 6, seed=1)
    assert [tuple(x.shape[1:]) for x in s] == h.shapes and all(torch.isfinite(x).all() for x in s)
    for e, (a, b) in enumerate(h.edges):  # every coarse map sees its finer maps' blobs, mean-pooled
        counts = h.aggregate(torch.ones((1,) + h.shapes[a], dtype=torch.float64), e)
        pooled = h.aggregate(s[a], e) / counts
        corr = torch.corrcoef(torch.stack([pooled.flatten(), s[b].flatten()]))[0, 1]
        assert corr > 0.5, (e, float(corr))
    if structure == "star":  # heads of one shape look at the same lesions
        corr = torch.corrcoef(torch.stack([s[0].flatten(), s[1].flatten()]))[0, 1]
        assert corr > 0.5
