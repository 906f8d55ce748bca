"""convex_attention.bench.structures: the named structure families of the harness (and the
facts bench.config keeps about them for the command line's checks)."""
import math

import pytest
import torch

import convex_attention as ca
from convex_attention.bench.structures import (
    STRUCTURES,
    check_structure,
    cutting_regions,
    random_structure,
    structure_cells,
    structure_graph,
    structure_maps,
)

KIND = {"chain": "chain", "star": "forest", "axial": "graph", "grid_regions": "graph", "mixed": "graph"}


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("size, dims", [(16, 2), (32, 2), (16, 3)])
def test_every_family_builds_its_graph_with_the_facts_the_checks_use(structure, size, dims):
    h = structure_graph(structure, size, dims=dims, levels=3)
    assert h.kind == KIND[structure]
    assert h.num_maps == structure_maps(structure, dims, 3)
    # the check's cell count is exact unless a random centre captured no cell (then it is an upper bound)
    assert sum(h.sizes) <= structure_cells(structure, size, dims, 3)
    if structure in ("chain", "star", "axial"):
        assert sum(h.sizes) == structure_cells(structure, size, dims, 3)
    assert h.shapes[0] == (size,) * dims


def test_the_families_are_what_their_names_say():
    star = structure_graph("star", 64)
    assert star.shapes == [(64, 64)] * 4 + [(16, 16)] and star.edges == [(k, 4) for k in range(4)]
    axial = structure_graph("axial", 8)
    assert axial.shapes == [(8, 8), (8, 1), (1, 8)]
    gr = structure_graph("grid_regions", 64)
    assert gr.shapes[:2] == [(64, 64), (8, 8)] and gr.edges == [(0, 1), (0, 2)]
    mixed = structure_graph("mixed", 64)
    assert mixed.shapes[:3] == [(64, 64), (32, 32), (8, 8)]
    assert mixed.edges == [(0, 2), (1, 2), (0, 3), (1, 3)]


@pytest.mark.parametrize("structure", ["grid_regions", "mixed"])
def test_regions_cut_across_the_grid(structure):
    h = structure_graph(structure, 32)
    fine = 0
    grid_edge, region_edge = h.out_edges[fine]
    grid, regions = h.parents(grid_edge), h.parents(region_edge)
    pairs = set(zip(grid.tolist(), regions.tolist()))
    assert any(len({r for c, r in pairs if c == cell}) > 1 for cell in set(grid.tolist())), \
        "a grid cell holds two regions"
    assert any(len({c for c, r in pairs if r == reg}) > 1 for reg in set(regions.tolist())), \
        "a region spans two grid cells"


def test_mixed_regions_of_the_fine_map_are_not_the_coarse_maps_pooled_back():
    h = structure_graph("mixed", 32)
    x_regions = h.parents(2).reshape(32, 32)
    y_regions = h.parents(3).reshape(16, 16)
    lifted = y_regions.repeat_interleave(2, 0).repeat_interleave(2, 1)
    differ = x_regions != lifted
    assert differ.any() and not differ[0::2, 0::2].any(), "only the odd-odd cells are moved"


def test_cutting_regions_are_seeded_non_empty_and_chunked_the_same():
    a = cutting_regions((12, 10), 7, torch.Generator().manual_seed(3))
    b = cutting_regions((12, 10), 7, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (12, 10)
    counts = torch.bincount(a.flatten())
    assert (counts > 0).all() and len(counts) <= 7
    # a table of distances too large for one piece is built in chunks, with the same answer
    big = cutting_regions((64, 64), 2 ** 12, torch.Generator().manual_seed(0))
    assert big.shape == (64, 64) and int(big.max()) + 1 <= 2 ** 12


@pytest.mark.parametrize("structure, size, dims, message", [
    ("axial", 16, 1, "axial .* needs --dims 2 or 3"),
    ("star", 18, 2, "multiple of 4"),
    ("grid_regions", 8, 2, "at least 16"),
    ("mixed", 20, 2, "multiple of 8"),
    ("chain", 10, 2, "does not divide"),
    ("ring", 16, 2, "unknown structure"),
])
def test_a_structure_without_a_graph_at_that_size_is_refused_naming_the_fix(structure, size, dims, message):
    with pytest.raises(ValueError, match=message):
        check_structure(structure, size, dims, levels=3)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("quick", [True, False])
def test_random_members_are_small_and_of_their_family(structure, quick):
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        h = random_structure(structure, g, quick)
        assert isinstance(h, ca.Graph) and h.kind == KIND[structure]
        assert sum(h.sizes) <= 120, "small enough for CVXPY at tight tolerances"
        assert math.prod(h.shapes[0]) == h.sizes[0]


@pytest.mark.parametrize("structure", ["grid_regions", "mixed"])
def test_region_families_have_as_many_regions_as_grid_cells_and_a_seed(structure):
    grid_cells = (32 // 8) ** 2
    graphs = [structure_graph(structure, 32, seed=seed) for seed in range(4)]
    # at most one centre in a few hundred captures no cell
    assert all(grid_cells - 1 <= h.sizes[-1] <= grid_cells for h in graphs)
    assert sum(h.sizes[-1] == grid_cells for h in graphs) >= 3
    again = structure_graph(structure, 32, seed=1)
    assert torch.equal(again.parents(len(again.edges) - 1), graphs[1].parents(len(again.edges) - 1))
    assert any(not torch.equal(h.parents(len(h.edges) - 1), graphs[0].parents(len(h.edges) - 1)) for h in graphs[1:])


def test_mixed_moves_the_odd_cells_of_x_to_the_region_of_the_next_y_cell_along_the_diagonal():
    h = structure_graph("mixed", 32)
    x_regions = h.parents(2).reshape(32, 32)
    y_regions = h.parents(3).reshape(16, 16)
    nxt = torch.roll(y_regions, shifts=(-1, -1), dims=(0, 1))  # Y cell (i+1, j+1), wrapping
    assert torch.equal(x_regions[1::2, 1::2], nxt)
    assert torch.equal(x_regions[0::2, 1::2], y_regions) and torch.equal(x_regions[1::2, 0::2], y_regions)


@pytest.mark.parametrize("structure, size", [("star", 18), ("mixed", 20), ("grid_regions", 8), ("chain", 10)])
def test_structure_graph_refuses_a_size_without_a_graph(structure, size):
    with pytest.raises(ValueError, match="--structure|does not divide"):
        structure_graph(structure, size, levels=3)


def test_random_chains_have_two_or_three_levels_and_3d_ones_only_in_full_mode():
    for quick, dims in [(True, {2}), (False, {2, 3})]:
        g = torch.Generator().manual_seed(0)
        chains = [random_structure("chain", g, quick) for _ in range(30)]
        assert {h.num_maps for h in chains} == {2, 3}
        assert {len(h.shapes[0]) for h in chains} == dims


def test_random_mixed_in_quick_mode_has_y_equal_to_the_2x2_grid():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        h = random_structure("mixed", g, quick=True)
        assert h.shapes[:3] == [(4, 4), (2, 2), (2, 2)]


def test_random_region_members_mostly_have_several_regions():
    g = torch.Generator().manual_seed(0)
    regions = [random_structure("grid_regions", g).sizes[-1] for _ in range(20)]
    assert sum(r > 1 for r in regions) >= 15 and len(set(regions)) > 1


def test_random_structure_refuses_an_unknown_family():
    with pytest.raises(ValueError, match="unknown structure"):
        random_structure("ring", torch.Generator().manual_seed(0))


# ---- ca_rev211 (mutation review of ef12afd, baselines, examples, generators, structures, ops):
#      tests that kill surviving mutants

def test_ca_rev211_grid_cell_centres_are_half_a_cell_in():
    from convex_attention.bench.structures import _cells

    assert _cells((2, 3)).tolist() == [[0.5, 0.5], [0.5, 1.5], [0.5, 2.5], [1.5, 0.5], [1.5, 1.5], [1.5, 2.5]]


def test_ca_rev211_random_stars_in_full_mode_have_two_to_four_arms_of_both_widths():
    """Full-mode stars draw 2, 3 or 4 arms, each arm 2 or 3 times the centre's second side."""
    arms, ratios = set(), set()
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        h = random_structure("star", g)
        arms.add(h.num_maps - 1)
        ratios |= {s[1] // h.shapes[-1][1] for s in h.shapes[:-1]}
    assert arms == {2, 3, 4} and ratios == {2, 3}


# ---- ca_rev258 (hostile review of the instance generators)

def _ca_rev258_cells_form_a_cycle(fine_to_a: torch.Tensor, fine_to_b: torch.Tensor) -> bool:
    """Whether the cells of two coarsenings of one map, joined where they share a fine cell, form a cycle
    (otherwise the constraints are a tree at the level of cells, nested or not)."""
    pairs = set(zip(fine_to_a.tolist(), fine_to_b.tolist()))
    root: dict = {}

    def find(x):
        while root.setdefault(x, x) != x:
            x = root[x]
        return x

    for a, b in pairs:
        ra, rb = find(("a", a)), find(("b", b))
        if ra == rb:
            return True
        root[ra] = rb
    return False


@pytest.mark.parametrize("structure", ["grid_regions", "mixed"])
def test_ca_rev258_benchmark_regions_are_never_a_tree_of_cells_with_the_grid(structure):
    """The non-tree families at the benchmark's sizes: for every seed the grid cells and the regions of the
    finest map form a cycle through shared cells (the review measured 0 trees in 160 2-D draws, sides 16-64;
    mixed's Y alone is a tree with them in 7 of 40 draws at side 16, none at 32 and 64), and every edge is a
    partition without an empty coarse cell."""
    for seed in range(8):
        h = structure_graph(structure, 16, seed=seed)
        for e in range(h.num_edges):
            counts = torch.bincount(h.parents(e), minlength=h.sizes[h.edges[e][1]])
            assert (counts > 0).all() and len(counts) == h.sizes[h.edges[e][1]]
        grid_edge, region_edge = h.out_edges[0]
        assert _ca_rev258_cells_form_a_cycle(h.parents(grid_edge), h.parents(region_edge)), seed


def test_ca_rev258_axial_margins_are_rows_and_columns_and_the_star_shares_its_centre():
    h = structure_graph("axial", 6)
    rows, columns = (h.parents(e).reshape(6, 6) for e in (0, 1))
    assert h.shapes == [(6, 6), (6, 1), (1, 6)]
    assert (rows == torch.arange(6)[:, None]).all() and (columns == torch.arange(6)[None, :]).all()
    star = structure_graph("star", 8)
    assert star.edges == [(k, 4) for k in range(4)] and star.shapes[4] == (2, 2)
    assert all(torch.equal(star.parents(0), star.parents(e)) for e in range(4))


# ---- ca_rev265 (hostile review of the bench generators)

def _ca_rev265_tree_of_cells(h) -> bool:
    """Whether the cells of a graph of maps form no cycle: every map's cells merged where they have the same
    coarse cells along its edges, each joined to those coarse cells (a forest of cells: a closed form applies)."""
    root: dict = {}

    def find(x):
        while root.setdefault(x, x) != x:
            x = root[x]
        return x

    for k, out in enumerate(h.out_edges):
        for cells in set(zip(*[h.parents(e).tolist() for e in out])):
            for e, c in zip(out, cells):
                a, b = find((k, cells)), find((h.edges[e][1], c))
                if a == b:
                    return False
                root[a] = b
    return True


def test_ca_rev265_grid_regions_in_1d_is_refused_its_regions_are_intervals_a_tree_of_cells_with_the_grid():
    """1-D grid_regions was accepted (bench --structure grid_regions --dims 1): 200 of 200 draws at sides 16, 64
    and 256 were trees of cells, and 27 of 200 at side 16 had the grid's blocks for regions."""
    with pytest.raises(ValueError, match="grid_regions .* needs --dims 2 or 3"):
        check_structure("grid_regions", 16, dims=1)
    with pytest.raises(ValueError, match="needs --dims 2 or 3"):
        structure_graph("grid_regions", 64, dims=1)
    check_structure("mixed", 16, dims=1)  # (X's twisted regions and Y close cycles on a line too)
    assert not _ca_rev265_tree_of_cells(structure_graph("mixed", 16, dims=1, seed=3))
    for dims in (2, 3):
        assert not _ca_rev265_tree_of_cells(structure_graph("grid_regions", 16, dims=dims, seed=3))


def test_ca_rev265_random_mixed_members_are_never_trees_of_cells():
    """random_structure's docstring had mixed a tree of cells in 1 and 4 of 600 draws: with Y's cells counted,
    none of 600 in either mode (X alone with the grid and the regions: 0 and 1)."""
    for quick in (False, True):
        g = torch.Generator().manual_seed(0)
        assert not any(_ca_rev265_tree_of_cells(random_structure("mixed", g, quick)) for _ in range(150))
