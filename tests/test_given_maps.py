"""convex_attention.given_maps: given maps that hold the same cells made to agree (the structure
they are joined by, and the agreement itself).  The solves that use it (float32 and float64 work
with given maps rounded apart) are tested in tests/test_dual.py."""
import hypothesis
import hypothesis.strategies as hst
import torch

import convex_attention as ca
from convex_attention import given_maps


def test_given_maps_with_no_cell_in_common_are_left_alone():
    """A single given map, and two given maps in two parts of a graph that no map relates (0 → 2 and 1 → 3, maps 2
    and 3 given): nothing to join (None), and given_maps.agreeing_given says so (None: they are used as they are).  The
    leaves of a star pooled onto its scored centre are related (ca_rev112: they were left apart and a right
    temperature gradient refused): joined cell by cell of the centre."""
    h = ca.Graph.from_edges([4, 4, 2, 2], [(0, 2, torch.tensor([0, 0, 1, 1])), (1, 3, torch.tensor([0, 1, 0, 1]))])
    assert given_maps.joined_given_blocks(h, [False, False, True, False]) is None
    assert given_maps.joined_given_blocks(h, [False, False, True, True]) is None
    q = torch.softmax(torch.randn(3, 2, dtype=torch.float64), -1)
    assert given_maps.agreeing_given(h, [None, None, q, q.flip(-1)]) is None
    star = ca.Graph.from_edges([4, 4, 2], [(0, 2, torch.tensor([0, 0, 1, 1])), (1, 2, torch.tensor([0, 1, 0, 1]))])
    joined = given_maps.joined_given_blocks(star, [True, True, False])
    assert joined is not None and joined[0].tolist() == [0, 0, 1, 1] and joined[1].tolist() == [0, 1, 0, 1]


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(hst.integers(2, 5), hst.integers(2, 5), hst.integers(0, 2 ** 31 - 1))
def test_consistent_given_maps_agree_on_every_joined_component(blocks_a, blocks_b, seed):
    """A scored map of 12 cells with two given coarsenings drawn at random (irregular; every block non-empty), their
    pools rounded to float32 and renormalised: after given_maps.agreeing_given every component of
    given_maps.joined_given_blocks holds the same mass in both (to 1e-15), each map sums to one, and no block moved by
    more than 1e-6 of itself (the rounding they differ by)."""
    g = torch.Generator().manual_seed(seed)

    def partition(n_blocks):
        parents = torch.cat([torch.arange(n_blocks), torch.randint(0, n_blocks, (12 - n_blocks,), generator=g)])
        return parents[torch.randperm(12, generator=g)]

    pa, pb = partition(blocks_a), partition(blocks_b)
    h = ca.Graph.from_edges([12, blocks_a, blocks_b], [(0, 1, pa), (0, 2, pb)])
    p = torch.softmax(torch.randn(3, 12, generator=g, dtype=torch.float64), -1)
    pools = [torch.zeros(3, n, dtype=torch.float64).index_add_(1, par, p)
             for n, par in ((blocks_a, pa), (blocks_b, pb))]
    wide = [None, *[given_maps.normalised(q.float().double()) for q in pools]]
    agreed = given_maps.agreeing_given(h, wide)
    joined = given_maps.joined_given_blocks(h, [False, True, True])
    assert joined is not None
    for k in (1, 2):
        assert bool(((agreed[k].sum(-1) - 1).abs() <= 1e-15).all())
        assert bool(((agreed[k] - wide[k]).abs() <= 1e-6 * wide[k]).all())
    components = int(joined[1].max()) + 1
    mass = [torch.zeros(3, components, dtype=torch.float64).index_add_(1, joined[k], agreed[k]) for k in (1, 2)]
    assert bool(((mass[0] - mass[1]).abs() <= 1e-15).all()), (mass[0] - mass[1]).abs().max()


def _ca_rev112_diamond_ladder(diamonds: int, branches=None):
    """Map 0 (64 cells, scored) pools into map 1 (8 cells, cell mod 8), then ``diamonds`` diamonds of scored 8-cell
    maps (c → a, c → b, a → c', b → c', identity partitions, or ``branches`` for c → a and c → b), the last c' given;
    map 0 also pools into a given map of 2 cells (its halves).  ``(graph, given mask)``: 4·diamonds + 3 maps,
    4·diamonds + 2 edges; 2**diamonds paths lead from map 0 to the top."""
    sizes, edges, identity = [64, 8], [(0, 1, torch.arange(64) % 8)], torch.arange(8)
    first, second = (identity, identity) if branches is None else branches  # (each diamond's two branches)
    below = 1
    for _ in range(diamonds):
        a = len(sizes)
        sizes += [8, 8, 8]
        edges += [(below, a, first), (below, a + 1, second), (a, a + 2, identity), (a + 1, a + 2, identity)]
        below = a + 2
    sizes.append(2)
    edges.append((0, len(sizes) - 1, torch.arange(64) // 32))
    mask = [False] * len(sizes)
    mask[below] = mask[-1] = True
    return ca.Graph.from_edges(sizes, edges), mask


# fixed: each map's reach built once, over the maps in order (given_maps.given_reach)
def test_ca_rev112_joined_given_blocks_walks_every_path_of_a_diamond_ladder():
    """:func:`_ca_rev112_diamond_ladder` with 10 diamonds (33 maps, 42 edges): given_maps.joined_given_blocks (then
    dual._joined_given_blocks), which every float32 forward with given maps and a temperature that requires grad
    runs, calls the graph's parent map (Graph._cpu_parents) 20,362 times: dual._pooled_into_given pushes one stack
    entry per PATH from a map to the given maps (1,025 entries from map 0 alone, 1,024 of them the same composed map
    onto the top), and each entry is stacked and scattered again in every label-propagation sweep. It grows 4× per
    diamond (8: 5,022; 12: 81,782, 0.47-0.67 s here against 0.27 s for the whole fixed-temperature float32 forward
    at batch 4; the learned one 0.91 s). Expected: each map walked once per map it starts from, at most (maps ×
    edges) = 1,386 parent maps read, and the same join (the top's blocks joined with the halves: one component)."""
    h, mask = _ca_rev112_diamond_ladder(10)
    real, calls = h._cpu_parents, []

    def counted(e):
        calls.append(e)
        return real(e)

    h._cpu_parents = counted
    try:
        joined = given_maps.joined_given_blocks(h, mask)
    finally:
        del h._cpu_parents
    assert joined is not None and {int(c.max()) for c in joined.values()} == {0}, joined
    assert len(calls) <= h.num_maps * h.num_edges, (len(calls), h.num_maps, h.num_edges)


# fixed: connected components by scipy (given_maps.joined_given_blocks)
def test_ca_rev113_joined_given_blocks_sweeps_grow_with_the_map(monkeypatch):
    """A scored map of 4096 cells with two given coarsenings into pairs, one shifted by a cell ([c // 2] and
    [(c + 1) // 2 mod 2048]), each's block labels randomly permuted (seed 0): one component, a cycle through every
    cell.  The join's label propagation with pointer jumping (one torch.equal per sweep) takes 1,507
    sweeps here (577 at 1,024 cells, 10,105 at 16,384, 21,717 at 65,536: 32 s of CPU at 256², 2.9 s at 128², run by
    every forward with two related given maps, dual._work_inputs), each sweep over all the edges: quadratic in the
    map.  The same blocks unpermuted take 13-19 sweeps at every size.  Expected: a join whose sweeps do not grow with
    the map (a union-find; here at most 64 sweeps) and the same single component."""
    n, half = 4096, 2048
    cells = torch.arange(n)
    g = torch.Generator().manual_seed(0)
    a = torch.randperm(half, generator=g)[cells // 2]
    b = torch.randperm(half, generator=g)[((cells + 1) // 2) % half]
    h = ca.Graph.from_edges([n, half, half], [(0, 1, a), (0, 2, b)])
    mask = [False, True, True]
    reach = given_maps.given_reach(h, mask)
    real, sweeps = torch.equal, []

    def counted(x, y):
        sweeps.append(1)
        return real(x, y)

    monkeypatch.setattr(torch, "equal", counted)
    joined = given_maps.joined_given_blocks(h, mask, reach)
    monkeypatch.undo()
    assert joined is not None and {int(c.max()) for c in joined.values()} == {0}
    assert len(sweeps) <= 64, len(sweeps)


# fixed: at most REACH_PATHS differently pooling paths kept per map and given map (given_maps.given_reach)
def test_ca_rev113_given_reach_grows_4x_per_diamond_with_permuted_branches(monkeypatch):
    """:func:`_ca_rev112_diamond_ladder`'s shape with 10 diamonds (33 maps, 42 edges), but each diamond's two branches
    pool through two different permutations of the 8 cells (seed 0: σ and τ, not commuting; identity partitions
    above them): the compositions along the 1,024 paths from map 0 to the top are nearly all different, so
    given_maps.given_reach's dedupe (torch.equal against every entry kept) keeps 981 entries for map 0 alone and calls
    torch.equal 1,460,644 times (4 diamonds: 345; 6: 5,985; 8: 95,265: 4x per diamond, 16x per two), in every
    forward with two given maps (dual._work_inputs).  9193438's 4x per diamond (ca_rev112) is fixed only where the
    paths compose alike.  Expected: the reach within maps × edges entries in all and as many comparisons."""
    g = torch.Generator().manual_seed(0)
    h, mask = _ca_rev112_diamond_ladder(10, (torch.randperm(8, generator=g), torch.randperm(8, generator=g)))
    real, calls = torch.equal, []

    def counted(x, y):
        calls.append(1)
        return real(x, y)

    monkeypatch.setattr(torch, "equal", counted)
    down, up = given_maps.given_reach(h, mask)
    monkeypatch.undo()
    entries = sum(len(d) + len(u) for d, u in zip(down, up))
    bound = h.num_maps * h.num_edges
    assert entries <= bound and len(calls) <= bound, (entries, len(calls), len(down[0]), bound)


# ---- ca_rev204 (mutation review of 31dcde3)


def _ca_rev204_factors_case():
    """A scored 3-cell map pooled (identity) onto two given maps that disagree, (0.1, 0.4, 0.5) and (0.3, 0.4, 0.3),
    in sample 0, and agree in sample 1: they are made to agree on the mean (0.2, 0.4, 0.4), factors (2, 1, 0.8) and
    (2/3, 1, 4/3) apart by 1 at most (by 2/3 on the mean over the maps, by 0.4 on the mean over the cells)."""
    h = ca.Graph.from_edges([3, 3, 3], [(0, 1, torch.tensor([0, 1, 2])), (0, 2, torch.tensor([0, 1, 2]))])
    q1 = torch.tensor([[0.1, 0.4, 0.5], [0.2, 0.3, 0.5]], dtype=torch.float64)
    q2 = torch.tensor([[0.3, 0.4, 0.3], [0.2, 0.3, 0.5]], dtype=torch.float64)
    return h, [None, q1, q2]


def test_ca_rev204_agreement_factors_by_hand_and_only_where_the_maps_are_apart():
    """Kills given_maps.agreement_factors with ``torch.where`` flipped (the factors where the maps agree, ones where
    they are apart), and the ``allowed`` bound dropped or measured by a mean (over the maps: 2/3; over the cells:
    0.4) instead of the largest |factor − 1| (1): maps further apart than ``allowed`` = 0.8 are left as given."""
    h, given = _ca_rev204_factors_case()
    f = given_maps.agreement_factors(h, given, 0.0, float("inf"))
    want = {1: torch.tensor([[2.0, 1.0, 0.8], [1, 1, 1]], dtype=torch.float64),
            2: torch.tensor([[2 / 3, 1.0, 4 / 3], [1, 1, 1]], dtype=torch.float64)}
    assert set(f) == {1, 2}
    for k in (1, 2):
        torch.testing.assert_close(f[k], want[k], rtol=0, atol=1e-12)
    f = given_maps.agreement_factors(h, given, 0.0, 0.8)
    assert all(bool((x == 1).all()) for x in f.values()), f


def test_ca_rev204_agreement_factors_bounds_are_inclusive_above_and_exclusive_below():
    """Kills ``apart <= allowed`` → ``<`` and ``apart > floor`` → ``>=`` in given_maps.agreement_factors, and the
    ``floor`` bound dropped: maps apart by exactly ``allowed`` are made to agree, by exactly ``floor`` (or less) are
    used as given (the docstring: "apart by more than floor and no more than allowed")."""
    h, given = _ca_rev204_factors_case()
    full = given_maps.agreement_factors(h, given, 0.0, float("inf"))
    apart = float(torch.stack([(x - 1).abs().amax(1) for x in full.values()]).amax(0)[0])
    at_allowed = given_maps.agreement_factors(h, given, 0.0, apart)
    assert all(torch.equal(at_allowed[k], full[k]) for k in full)
    for floor in (apart, 1.5 * apart):
        below = given_maps.agreement_factors(h, given, floor, float("inf"))
        assert all(bool((x == 1).all()) for x in below.values()), (floor, below)


def test_ca_rev204_normalised_divides_each_sample_by_its_own_sum():
    """Kills given_maps.normalised returning the map as given, or dividing by the batch's sum (times B): a (2, 2, 2)
    batch of maps off by +5e-5 and −5e-5 comes back divided per sample, each summing to one."""
    q = torch.tensor([[[0.1, 0.2], [0.3, 0.40005]], [[0.25, 0.25], [0.25, 0.24995]]], dtype=torch.float64)
    got = given_maps.normalised(q)
    torch.testing.assert_close(got, q / q.sum((1, 2), keepdim=True), rtol=0, atol=0)
    torch.testing.assert_close(got.sum((1, 2)), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-15)


def test_ca_rev204_given_reach_keeps_two_differently_pooling_paths_and_one_of_alike_ones():
    """Kills given_maps.REACH_PATHS = 1 (the second of two differently pooling paths from a map to a given map
    dropped) and given_reach's ``torch.equal`` de-duplication dropped (two alike paths kept twice): map 0 (4 cells)
    pools through scored maps a and b onto the given map 3, by halves and by parity, or by halves twice."""
    def diamond(parity):
        second = torch.tensor([0, 1, 0, 1]) if parity else torch.tensor([0, 0, 1, 1])
        ident = torch.tensor([0, 1])
        return ca.Graph.from_edges([4, 2, 2, 2], [(0, 1, torch.tensor([0, 0, 1, 1])), (0, 2, second), (1, 3, ident),
                                                  (2, 3, ident)])

    down, _ = given_maps.given_reach(diamond(True), [False, False, False, True])
    assert sorted(p.tolist() for t, p in down[0] if t == 3) == [[0, 0, 1, 1], [0, 1, 0, 1]]
    down, _ = given_maps.given_reach(diamond(False), [False, False, False, True])
    assert [p.tolist() for t, p in down[0] if t == 3] == [[0, 0, 1, 1]]


# ---- ca_rev226 (design.md §4 truth audit, part 2): the paths kept per map and given map


def test_ca_rev226_the_reach_keeps_the_documented_number_of_paths():
    """design.md §4: the reach "keeps at most ``given_maps.REACH_PATHS`` = 2 such paths per map and given map"
    (ca_rev198's test kills 1; this pins the documented number itself)."""
    assert given_maps.REACH_PATHS == 2
