import pytest
import torch
from helpers import GRID_CASES, aggregation_matrix, make_hierarchy, random_parents

import convex_attention as ca


@pytest.mark.parametrize("case", sorted(GRID_CASES))
def test_grid_parents_match_block_structure(case):
    h = ca.Hierarchy.grid(GRID_CASES[case])
    for k in range(h.num_levels - 1):
        fine, coarse = h.shapes[k], h.shapes[k + 1]
        idx = torch.arange(h.sizes[k]).reshape(fine)
        coords = torch.unravel_index(idx.flatten(), fine)
        factors = [f // c for f, c in zip(fine, coarse)]
        expected = torch.zeros(h.sizes[k], dtype=torch.long)
        for d, c in enumerate(coords):
            expected = expected * coarse[d] + c // factors[d]
        assert torch.equal(h.parents(k), expected)


@pytest.mark.parametrize("case", sorted(GRID_CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_grid_fast_path_equals_scatter_path(case, dtype):
    h = ca.Hierarchy.grid(GRID_CASES[case])
    flat = h.flat()
    assert not flat.is_grid and h.is_grid
    for k in range(h.num_levels - 1):
        x = torch.randn((3,) + h.shapes[k], dtype=dtype)
        y = torch.randn((3,) + h.shapes[k + 1], dtype=dtype)
        xf, yf = x.flatten(1), y.flatten(1)
        torch.testing.assert_close(h.aggregate(x, k).flatten(1), flat.aggregate(xf, k))
        assert torch.equal(h.block_max(x, k).flatten(1), flat.block_max(xf, k))
        assert torch.equal(h.broadcast(y, k).flatten(1), flat.broadcast(yf, k))
        torch.testing.assert_close(h.block_logsumexp(x, k).flatten(1), flat.block_logsumexp(xf, k))
        assert torch.equal(h.combine_broadcast(x, y, k, torch.mul).flatten(1),
                           flat.combine_broadcast(xf, yf, k, torch.mul))
        # leading dimensions broadcast (shared coarse tensor)
        assert torch.equal(h.combine_broadcast(x, y[:1], k, torch.sub).flatten(1),
                           flat.combine_broadcast(xf, yf[:1], k, torch.sub))


@pytest.mark.parametrize("case", sorted(GRID_CASES) + ["irregular-2lvl", "irregular-3lvl"])
def test_operators_match_explicit_matrices(case):
    h = make_hierarchy(case, seed=3)
    for k in range(h.num_levels - 1):
        P = torch.from_numpy(aggregation_matrix(h, k))
        x = torch.randn((2,) + h.shapes[k], dtype=torch.float64)
        y = torch.randn((2,) + h.shapes[k + 1], dtype=torch.float64)
        torch.testing.assert_close(h.aggregate(x, k).flatten(1), x.flatten(1) @ P.T)
        torch.testing.assert_close(h.broadcast(y, k).flatten(1), y.flatten(1) @ P)
        # adjointness: <P x, y> = <x, Pᵀ y>
        torch.testing.assert_close((h.aggregate(x, k) * y).sum(), (x * h.broadcast(y, k)).sum())


def test_block_softmax_sums_to_one_per_block_and_is_stable():
    h = ca.Hierarchy.grid([(8, 8), (2, 4)])
    z = torch.randn(3, 8, 8) * 1e4
    q, lse = h.block_softmax(z, 0)
    assert torch.isfinite(q).all() and torch.isfinite(lse).all()
    torch.testing.assert_close(h.aggregate(q, 0), torch.ones(3, 2, 4))
    torch.testing.assert_close(lse, h.block_logsumexp(z.double(), 0).float(), rtol=1e-6, atol=1e-3)


def test_irregular_reductions_and_gradients():
    parents = [torch.tensor([0, 1, 0, 2, 2, 1, 0])]
    h = ca.Hierarchy.from_parents([7, 3], parents)
    x = torch.arange(7.0).unsqueeze(0)
    assert torch.equal(h.aggregate(x, 0), torch.tensor([[0 + 2 + 6.0, 1 + 5.0, 3 + 4.0]]))
    assert torch.equal(h.block_max(x, 0), torch.tensor([[6.0, 5.0, 4.0]]))
    y = torch.tensor([[10.0, 20.0, 30.0]])
    assert torch.equal(h.broadcast(y, 0), torch.tensor([[10.0, 20.0, 10.0, 30.0, 30.0, 20.0, 10.0]]))
    xg = torch.randn(2, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: h.aggregate(t, 0), (xg,))
    assert torch.autograd.gradcheck(lambda t: h.block_logsumexp(t, 0), (xg,))


def test_grid_gradients():
    h = ca.Hierarchy.grid([(4, 6), (2, 3)])
    x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: h.aggregate(t, 0), (x,))
    assert torch.autograd.gradcheck(lambda t: h.broadcast(t, 0), (y,))
    assert torch.autograd.gradcheck(lambda a, b: h.combine_broadcast(a, b, 0, torch.mul), (x, y))


def test_attributes_and_equality():
    h = ca.Hierarchy.grid([(64, 64), (32, 32)])
    assert h.num_levels == 2 and h.shapes == [(64, 64), (32, 32)] and h.sizes == [4096, 1024]
    assert h.factors == [(2, 2)]
    assert ca.Hierarchy.grid([(8, 8), (4, 4), (1, 2)]).factors == [(2, 2), (4, 2)]  # one tuple per level pair
    assert h == ca.Hierarchy.grid([(64, 64), (32, 32)]) and hash(h) == hash(ca.Hierarchy.grid([(64, 64), (32, 32)]))
    assert h != ca.Hierarchy.grid([(64, 64), (16, 16)])
    h1 = ca.Hierarchy.grid([12, 4])  # 1-D levels given as ints
    assert h1.shapes == [(12,), (4,)]
    p = ca.Hierarchy.from_parents([12, 5], [torch.tensor([0, 1, 2, 3, 4] * 2 + [0, 1])])
    assert p.shapes == [(12,), (5,)] and p.num_levels == 2 and not p.is_grid


def test_random_partitions_have_no_empty_cells():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        parents = random_parents([30, 7, 2], g)
        h = ca.Hierarchy.from_parents([30, 7, 2], parents)
        for k in range(2):
            assert (torch.bincount(h.parents(k), minlength=h.sizes[k + 1]) > 0).all()


@pytest.mark.parametrize("shapes, message", [
    ([(8, 8)], "at least 2 levels"),
    ([(8, 8), (3, 4)], "does not divide"),
    ([(9,), (2,)], "does not divide"),
    ([(8, 8), (4,)], "same number of dimensions"),
    ([(8,), (4, 2)], "same number of dimensions"),
    ([(8, 0), (4, 4)], "positive"),
])
def test_grid_errors(shapes, message):
    with pytest.raises(ValueError, match=message):
        ca.Hierarchy.grid(shapes)


def test_grid_type_errors():
    with pytest.raises(TypeError):
        ca.Hierarchy.grid("64x64")
    with pytest.raises(TypeError):
        ca.Hierarchy.grid([(8.0, 8), (4, 4)])


@pytest.mark.parametrize("sizes, parents, exc, message", [
    ([4, 2], [torch.tensor([0, 1, 2, 0])], ValueError, "out of range"),
    ([4, 2], [torch.tensor([0, -1, 1, 0])], ValueError, "out of range"),
    ([4, 3], [torch.tensor([0, 1, 1, 0])], ValueError, "empty"),
    ([4, 2], [torch.tensor([0, 1, 1])], ValueError, r"shape \(4,\)"),
    ([4, 2], [torch.tensor([0.0, 1.0, 1.0, 0.0])], TypeError, "integers"),
    ([4, 2, 1], [torch.tensor([0, 1, 1, 0])], ValueError, "expected 2 parent maps"),
    ([4], [], ValueError, "at least 2 levels"),
])
def test_from_parents_errors(sizes, parents, exc, message):
    with pytest.raises(exc, match=message):
        ca.Hierarchy.from_parents(sizes, parents)


def test_operator_shape_errors():
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    with pytest.raises(ValueError, match="shape"):
        h.aggregate(torch.zeros(2, 4, 5), 0)
    with pytest.raises(ValueError, match="constraint index"):
        h.aggregate(torch.zeros(2, 4, 4), 1)
    with pytest.raises(ValueError, match="shape"):
        h.broadcast(torch.zeros(2, 4, 4), 0)


# ------------------------------------------------------------------ every bad partition, a clear message

@pytest.mark.parametrize("sizes, parents, exc, message", [
    ([4, 2], ["0", "1", "1", "0"], ValueError, r"expected 1 parent maps.*wrap a single map in a list"),
    ([4, 2], [0, 1, 1, 0], ValueError, r"expected 1 parent maps.*wrap a single map in a list"),
    ([4, 2], [["0", "1", "1", "0"]], TypeError, r"parents\[0\] must be a 1-D integer tensor.*could not read it"),
    ([4, 2], ["0110"], TypeError, r"parents\[0\] must be a 1-D integer tensor.*got str"),
    ([4, 2], None, TypeError, r"parents must be a list of 1 integer tensors"),
    ([4, 2], "0110", TypeError, r"parents must be a list of 1 integer tensors"),
    ([4, 2], [None], TypeError, r"parents\[0\] must be a 1-D integer tensor.*got NoneType"),
    ([4, 2], [3], TypeError, r"parents\[0\] must be a 1-D integer tensor.*got int"),
    ([4, 2], [[0, 1, 10 ** 30, 0]], ValueError, r"parents\[0\] out of range: an id does not fit a 64-bit integer"),
    ([4, 2], [torch.tensor([0, 1, 2 ** 62, 0])], ValueError, r"out of range: level 1 has 2 cells"),
    ([4, 2], [[]], ValueError, r"parents\[0\] must be .* of shape \(4,\).*got shape \(0,\)"),
    ([4, 2], [], ValueError, r"expected 1 parent maps for 2 levels, got 0$"),  # no hint to wrap a map
    ([], [], ValueError, r"at least 2 levels, got 0"),
    ([4, 2], [[[0, 1], [1, 0]]], ValueError, r"parents\[0\] must be .* of shape \(4,\).*got shape \(2, 2\)"),
    ([4, 2], [[0, [1], 1, 0]], TypeError, r"parents\[0\] must be a 1-D integer tensor.*could not read it"),
    ([-4, 2], [[0, 1, 1, 0]], ValueError, r"size of level 0 must be positive"),
    ([4, 0], [[0, 0, 0, 0]], ValueError, r"size of level 1 must be positive"),
    ([10 ** 30, 2], [[0, 1, 1, 0]], ValueError, r"above the limit of 68719476736 \(2\*\*36"),
    ([2, 10 ** 9], [[0, 1]], ValueError, r"level 1 has more cells \(1000000000\) than level 0 \(2\)"),
    ([4, 2, 3], [[0, 1, 1, 0], [0, 1]], ValueError, r"level 2 has more cells \(3\) than level 1 \(2\)"),
    ("42", [[0, 1, 1, 0]], TypeError, r"sizes must be a list of level sizes"),
    (None, [[0, 1, 1, 0]], TypeError, r"sizes must be a list of level sizes"),
    ([4.0, 2], [[0, 1, 1, 0]], TypeError, r"size of level 0 must be an int"),
    ([4, 2], [torch.tensor([0, 1, 1, 0]), 0], ValueError, r"expected 1 parent maps for 2 levels, got 2$"),  # a map
    ([(2, 2), 2], [[0, 1, 1, 0]], ValueError, r"give the sizes as ints"),
])
def test_from_parents_bad_partitions_get_clear_messages(sizes, parents, exc, message):
    with pytest.raises(exc, match=message):
        ca.Hierarchy.from_parents(sizes, parents)
    if parents is not None:  # (Hierarchy(sizes) without parents is a 1-D grid)
        with pytest.raises(exc, match=message):  # the bare constructor validates the same way
            ca.Hierarchy(sizes, parents)


@pytest.mark.parametrize("shapes, exc, message", [
    ([(8, 8.5), (4, 4)], TypeError, r"shape of level 0 must contain ints"),
    ([(8, 8), ("4", 4)], TypeError, r"shape of level 1 must contain ints"),
    ([(), ()], ValueError, r"shape of level 0 is empty"),
    ([], ValueError, r"at least 2 levels, got 0"),
    ([(8, 0), (4, 1)], ValueError, r"shape of level 0 must be positive"),
    ([(8, 8), (0, 4)], ValueError, r"shape of level 1 must be positive"),
    (None, TypeError, r"shapes must be a list of level shapes"),
    ([None, None], TypeError, r"shape of level 0 must be an int or a tuple of ints"),
    ([(10 ** 6, 10 ** 6), (1, 1)], ValueError, r"level 0 has 1000000000000 cells .* above the limit"),
    ([(8, 8)], ValueError, r"at least 2 levels"),
    ([(8, 8), (3, 3)], ValueError, r"does not divide"),
    ([(8, 8), (8, 3)], ValueError, r"dimension 1 of level 1 \(3\) does not divide dimension 1 of level 0 \(8\)"),
    ([(8, 6), (4, 3), (4,)], ValueError, r"level 0 is 2-D \(8, 6\), level 2 is 1-D \(4,\)"),
])
def test_grid_bad_shapes_get_clear_messages(shapes, exc, message):
    with pytest.raises(exc, match=message):
        ca.Hierarchy.grid(shapes)
    with pytest.raises(exc, match=message):
        ca.Hierarchy(shapes)


def test_huge_grid_is_rejected_before_any_allocation(monkeypatch):
    """``grid([(10**6, 10**6), (1, 1)])`` once tried to allocate an 8 TB parent map."""
    def no_alloc(*args, **kwargs):
        raise AssertionError("allocated before checking the sizes")

    monkeypatch.setattr(torch, "arange", no_alloc)
    monkeypatch.setattr(torch, "zeros", no_alloc)
    with pytest.raises(ValueError, match=r"MAX_CELLS"):
        ca.Hierarchy.grid([(10 ** 6, 10 ** 6), (1, 1)])
    with pytest.raises(ValueError, match=r"MAX_CELLS"):
        ca.Hierarchy.from_parents([10 ** 12, 1], [torch.empty(0, dtype=torch.long)])


def test_grid_operators_never_build_parent_maps(monkeypatch):
    """A grid's parent maps are lazy: the strided operators (and the exact solver) never
    need them, so large grids cost nothing to describe; ``parents()`` builds them on demand."""
    h = ca.Hierarchy.grid([(512, 512), (256, 256), (64, 64)])
    assert h.sizes == [512 * 512, 256 * 256, 64 * 64]

    def no_maps(*args, **kwargs):
        raise AssertionError("a parent map was built")

    monkeypatch.setattr(ca.Hierarchy, "_grid_parents", staticmethod(no_maps))
    x = torch.rand(1, 512, 512)
    y = h.aggregate(x, 0)
    torch.testing.assert_close(y.sum(), x.sum())
    h.broadcast(y, 0)
    h.block_logsumexp(y, 1)
    sol = ca.solve([torch.randn((1,) + s) for s in h.shapes], h, "exact")
    assert torch.isfinite(sol.probs[0]).all()
    monkeypatch.undo()
    small = ca.Hierarchy.grid([(4, 4), (2, 2)])
    assert torch.equal(small.parents(0), small.flat().parents(0))
    assert small.flat() is small.flat()  # made once


def test_bare_constructor_validates_like_the_factories():
    assert ca.Hierarchy([(8, 8), (4, 4)]) == ca.Hierarchy.grid([(8, 8), (4, 4)])
    assert ca.Hierarchy([(8, 8), (4, 4)], factors=[(2, 2)]) == ca.Hierarchy.grid([(8, 8), (4, 4)])
    p = [torch.tensor([0, 1, 1, 0])]
    assert ca.Hierarchy([4, 2], p) == ca.Hierarchy.from_parents([4, 2], p)
    g = ca.Hierarchy.grid([(4,), (2,)])
    assert ca.Hierarchy([(4,), (2,)], [g.parents(0)], [(2,)]) == g  # the old internal form
    assert ca.Hierarchy([8, 4], factors=[2]) == ca.Hierarchy.grid([8, 4])  # 1-D factors may be ints too
    with pytest.raises(TypeError, match=r"factors must be a list of 1 tuples of ints"):
        ca.Hierarchy([(8, 8), (4, 4)], factors=["ab"])
    with pytest.raises(ValueError, match=r"factors \[\(4, 4\)\] do not match the shapes"):
        ca.Hierarchy([(8, 8), (4, 4)], None, [(4, 4)])
    with pytest.raises(ValueError, match=r"is not the parent map of the grid"):
        ca.Hierarchy([(4,), (2,)], [torch.tensor([0, 1, 0, 1])], [(2,)])
    with pytest.raises(TypeError, match="integers"):  # the grid's map, but not integers: checked as from_parents does
        ca.Hierarchy([(4,), (2,)], [g.parents(0).double()], [(2,)])
    with pytest.raises(ValueError, match="empty"):
        ca.Hierarchy([4, 2], [torch.tensor([0, 0, 0, 0])])
    with pytest.raises(ValueError, match="out of range"):
        ca.Hierarchy([(4,), (2,)], [torch.tensor([0, 1, 2, 3])])


def test_integer_like_sizes_and_numpy_parent_maps_are_accepted():
    import numpy as np

    h = ca.Hierarchy.from_parents([np.int64(4), 2], [np.array([0, 1, 1, 0])])
    assert h.sizes == [4, 2] and all(isinstance(n, int) for n in h.sizes)
    assert ca.Hierarchy.grid([(np.int64(8), 8), (4, 4)]).shapes == [(8, 8), (4, 4)]


def test_levels_of_equal_size_are_accepted():
    """Sizes must not grow, but a level may keep its size (a relabelling of the cells)."""
    perm = torch.tensor([2, 0, 1])
    h = ca.Hierarchy.from_parents([3, 3, 1], [perm, torch.zeros(3, dtype=torch.long)])
    assert h.sizes == [3, 3, 1] and torch.equal(h.parents(0), perm)
    x = torch.arange(3.0).unsqueeze(0)
    assert torch.equal(h.aggregate(x, 0)[:, perm], x)


def test_repr_names_the_constructor():
    g = ca.Hierarchy.grid([(8, 8), (4, 4), (2, 1)])
    assert eval(repr(g), {"Hierarchy": ca.Hierarchy}) == g
    p = ca.Hierarchy.from_parents([4, 2], [torch.tensor([0, 1, 1, 0])])
    assert repr(p).startswith("Hierarchy.from_parents(") and "[4, 2]" in repr(p)


# ------------------------------------------------------------------ a review of the graph API (each failed before)

def test_hierarchy_from_edges_is_a_hierarchy_or_refused():
    chain = ([4, 2], [(0, 1, [0, 0, 1, 1])])
    star = ([4, 4, 2], [(0, 2, [0, 0, 1, 1]), (1, 2, [0, 1, 0, 1])])
    for sizes, edges in (chain, star):
        try:
            h = ca.Hierarchy.from_edges(sizes, edges)
        except (TypeError, ValueError):
            continue
        if isinstance(h, ca.Hierarchy):  # then it must be one: the chain, fully set up
            assert h.is_chain and h.num_levels == len(sizes) and "Hierarchy" in repr(h)


# ------------------------------------------------------------------ review ca_rev57 (strict xfail: known defects)

def test_rev57_a_numpy_integer_constraint_index_is_taken():
    """Edge endpoints take any integer (numbers.Integral: np.int64 too), but the kernels' index
    check wants a Python int and refuses np.int64(0) with 'constraint index k must be in [0, 0],
    got np.int64(0)', a message that contradicts itself (iterating np.arange(E), or an index read
    from an array, gives them).  Oracle: the same call with int(k)."""
    import numpy as np

    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    p = torch.rand(2, 4, 4, dtype=torch.float64)
    want = h.aggregate(p, 0)
    try:
        got = h.aggregate(p, np.int64(0))
    except ValueError as err:  # 'constraint index k must be in [0, 0], got np.int64(0)'
        got = err
    assert isinstance(got, torch.Tensor) and torch.equal(got, want), f"refused: {got}"


# ---- ca_rev179 (review of e535a2e; its strict xfails now pass)


@pytest.mark.parametrize("shapes, factors", [([8, 4], "2"), ([8, 4], [(2.9,)]), ([(8, 8), (4, 4)], ["22"]),
                                             ([(8, 8), (4, 4)], [(2.5, 2.0)]), ([8, 8], [True])])
def test_ca_rev179_factors_that_are_not_tuples_of_ints_are_refused(shapes, factors):
    """``hierarchy._check_factors`` converts with ``int(x)`` for ``x`` in each factor, so the
    string "2" (iterated: ``factors="2"``), ``"22"``, ``(2.9,)`` (truncated to 2) and ``True``
    (read as 1) are accepted as the factors the shapes imply, while ``[2.7]`` and ``["ab"]``
    are refused with "factors must be a list of ... tuples of ints": malformed input taken for
    a match.  Expected: TypeError for every one of them."""
    with pytest.raises(TypeError, match=r"factors must be"):
        ca.Hierarchy(shapes, factors=factors)


# ---- ca_rev183 (review of c2c898e; its strict xfails now pass)


def test_ca_rev183_a_zero_dimensional_array_as_a_factor_is_refused_in_the_constructors_words():
    """Run: ``Hierarchy([8, 4], factors=[np.array(2)])``.  Expected: the TypeError "factors must be
    a list of 1 tuples of ints, got [array(2)]" (e455928 said so).  Observed (21b029e, hierarchy.py
    ``_check_factors``: ``listing`` counts any ndarray, a 0-d one too, as a sequence, and
    ``all(map(whole, f))`` iterates it): NumPy's bare "iteration over a 0-d array", naming neither
    the argument nor the fix."""
    import numpy as np

    with pytest.raises(TypeError, match="factors must be"):
        ca.Hierarchy([8, 4], factors=[np.array(2)])


def test_ca_rev183_integer_tensor_factors_are_read_as_numpy_arrays_of_them_are():
    """Run: ``Hierarchy([(4, 4), (2, 2)], factors=torch.tensor([[2, 2]]))``.  Expected: accepted, as
    it was at e455928 and as ``factors=np.array([[2, 2]])`` is today (the ints are read as given;
    no bool, float or string is involved).  Observed (21b029e, hierarchy.py ``_check_factors``:
    ``listing`` takes a Sequence or an ndarray, not a tensor): "factors must be a list of 1 tuples
    of ints, got tensor([[2, 2]])"."""
    import numpy as np

    assert ca.Hierarchy([(4, 4), (2, 2)], factors=np.array([[2, 2]])).factors == [(2, 2)]
    assert ca.Hierarchy([(4, 4), (2, 2)], factors=torch.tensor([[2, 2]])).factors == [(2, 2)]


# ---- ca_rev225 (design.md §4 truth audit, part 1): Graph's constructors are refused on Hierarchy

@pytest.mark.parametrize("name, args", [
    ("from_edges", ([4, 2], [(0, 1, [0, 0, 1, 1])])),
    ("star", ([(4, 4)] * 2, (2, 2))),
    ("axial", ((4, 4),)),
    ("grid_regions", ([(4, 4), (2, 2)], torch.zeros(4, 4, dtype=torch.long))),
])
def test_ca_rev225_graph_constructors_are_refused_on_hierarchy_naming_graph_s(name, args):
    """design.md §4: "`Hierarchy.from_edges`, `.star`, `.axial` and `.grid_regions` are refused (a
    `Hierarchy` is a chain): they are `Graph`'s" (the test above lets from_edges succeed)."""
    with pytest.raises(TypeError, match=rf"Hierarchy\.{name}: .*use Graph\.{name}\("):
        getattr(ca.Hierarchy, name)(*args)
    assert isinstance(getattr(ca.Graph, name)(*args), ca.Graph)


# ---- ca_rev268 (hostile review of hierarchy.py and graph validation)

def _ca_rev268_quantized(dtype):
    import warnings
    with warnings.catch_warnings():  # (torch deprecates its quantized tensors)
        warnings.simplefilter("ignore")
        return torch.quantize_per_tensor(torch.tensor([0.0, 1.0, 1.0]), 1.0, 0, dtype)


@pytest.mark.parametrize("make", [lambda: _ca_rev268_quantized(torch.qint8), lambda: _ca_rev268_quantized(torch.quint8),
                                  lambda: torch.tensor([0, 1, 1], dtype=torch.uint8).view(torch.bits8)],
                         ids=["qint8", "quint8", "bits8"])
def test_ca_rev268_quantized_and_bits_parent_maps_are_refused_naming_them(make):
    """A quantized or bits tensor holds no plain ids: it was torch's own RuntimeError ("Creation of quantized
    tensor requires quantized dtype") or NotImplementedError ("copy_" not implemented for 'Bits8') from the
    copy to int64, naming neither the argument nor the dtype."""
    par = make()
    with pytest.raises(TypeError, match=rf"parents\[0\] must hold integers, got dtype {par.dtype}"):
        ca.Hierarchy.from_parents([3, 2], [par])
    with pytest.raises(TypeError, match=rf"edge 0 .*: parents must hold integers, got dtype {par.dtype}"):
        ca.Graph.from_edges([3, 2], [(0, 1, par)])
