"""The method registry (convex_attention.methods): one record per method, asked by solve
and the modules instead of comparing method names."""
import dataclasses

import pytest
import torch
from helpers import random_instance

import convex_attention as ca
from convex_attention.methods import REGISTRY, Method, get_method, register_method


def test_built_in_records_state_what_each_method_can_do():
    facts = {name: (m.needs_duals, m.has_duals, m.exact, m.consistent, m.tensor_temperature, m.cpu_only,
                    m.implied_masks, m.second_order)
             for name, m in REGISTRY.items() if name in ca.METHODS}
    assert facts == {
        "softmax": (False, False, False, False, True, False, False, True),
        "exact": (False, True, True, True, True, False, False, True),
        "cvxpylayers": (False, True, True, True, False, True, False, False),
        "dual": (False, True, True, True, True, False, False, False),
        "learned_dual": (True, True, False, False, True, False, True, True),
    }
    assert all(m.differentiable for m in REGISTRY.values() if m.name in ca.METHODS)
    assert get_method("dual").check_options is not None and get_method("cvxpylayers").check_options is not None


def test_get_method_returns_records_and_names_the_choices():
    record = get_method("exact")
    assert isinstance(record, Method) and get_method(record) is record
    for bad in ("sinkhorn", 3, None, ["exact"]):  # an unhashable name too
        with pytest.raises(ValueError, match="unknown method .* choose one of softmax, exact"):
            get_method(bad)
    with pytest.raises(TypeError, match="Method record"):
        register_method("exact")


def test_option_checks_of_the_records_run_before_any_work():
    h = ca.Hierarchy.grid([(4,), (2,)])
    get_method("dual").check_options({"tol": 1e-3, "max_iter": 5}, h)
    with pytest.raises(ValueError, match="tol"):
        get_method("dual").check_options({"tol": float("nan")}, h)
    with pytest.raises(ValueError, match="eps"):
        get_method("cvxpylayers").check_options({"eps": 0.0}, h)


@pytest.fixture
def custom_method():
    calls = []

    def fn(scores, h, temps, duals, options):
        calls.append((temps, dict(options)))
        return ca.solve(scores, h, "exact", temperature=temps).probs, None, {"custom": True}

    record = register_method(Method("tree_copy", fn, "exact under another name", options=frozenset({"knob"}),
                                    has_duals=False, tensor_temperature=False))
    yield record, calls
    del REGISTRY["tree_copy"]


def test_a_registered_method_is_seen_by_solve_and_the_module(custom_method):
    _, calls = custom_method
    inst = random_instance("2d-2lvl", batch=2)
    sol = ca.solve(inst.scores, inst.h, "tree_copy", temperature=inst.temps, knob=1)
    assert sol.method == "tree_copy" and sol.info == {"custom": True} and calls[-1][1] == {"knob": 1}
    with pytest.raises(TypeError, match="takes no option"):
        ca.solve(inst.scores, inst.h, "tree_copy", other=1)
    with pytest.raises(TypeError, match="takes no option"):
        ca.ConsistentAttention(inst.h, "tree_copy", other=1)
    layer = ca.ConsistentAttention(inst.h, "tree_copy", knob=2)
    assert layer.attend(inst.scores).solution.method == "tree_copy"


def test_a_method_with_no_diagnostics_may_return_none_as_its_info():
    """The module docstring: ``info`` is a dict, or None for none (read as {})."""
    def fn(scores, h, temps, duals, options):
        return ca.solve(scores, h, "exact", temperature=temps).probs, None, None

    register_method(Method("quiet_copy", fn, "exact, without diagnostics", options=frozenset(),
                           has_duals=False, tensor_temperature=False))
    try:
        inst = random_instance("1d-2lvl", batch=1)
        assert ca.solve(inst.scores, inst.h, "quiet_copy", temperature=inst.temps).info == {}
    finally:
        del REGISTRY["quiet_copy"]


def test_the_tensor_temperature_flag_decides_who_may_differentiate_through_it(custom_method):
    record, calls = custom_method
    inst = random_instance("1d-2lvl", batch=1)
    tau = torch.tensor(inst.temps, dtype=torch.float64, requires_grad=True)
    with pytest.raises(TypeError, match="method 'tree_copy' cannot differentiate through the temperature"):
        ca.solve(inst.scores, inst.h, "tree_copy", temperature=tau)
    register_method(dataclasses.replace(record, tensor_temperature=True))
    ca.solve(inst.scores, inst.h, "tree_copy", temperature=tau)
    assert all(isinstance(t, torch.Tensor) and t.requires_grad for t in calls[-1][0])


def test_the_implied_masks_flag_decides_whether_a_method_sees_the_cells_pooling_rules_out():
    """With check_finite=False, solve masks the cells that pooling rules out (a fine cell under a masked
    coarse cell) before a method with ``implied_masks`` sees the scores; one without sees them as given."""
    seen = []

    def fn(scores, h, temps, duals, options):
        seen.append([s.clone() for s in scores])
        return ca.solve(scores, h, "exact", temperature=temps, check_finite=False).probs, None, {}

    h = ca.Hierarchy.from_parents([4, 2], [[0, 0, 1, 1]])
    scores = [torch.tensor([[0.5, 0.1, 0.2, -0.3]]), torch.tensor([[-float("inf"), 0.4]])]
    try:
        for flag in (False, True):
            register_method(Method("mask_probe", fn, "exact, as given", has_duals=False, implied_masks=flag))
            ca.solve(scores, h, "mask_probe", check_finite=False)
            assert torch.isneginf(seen[-1][0][0, :2]).all() == flag and torch.isfinite(seen[-1][0][0, 2:]).all()
    finally:
        del REGISTRY["mask_probe"]


def test_the_registry_records_the_structures_each_method_solves():
    assert {name: REGISTRY[name].structures for name in ca.METHODS} == {
        "softmax": "graph", "exact": "forest", "cvxpylayers": "graph", "dual": "graph", "learned_dual": "graph"}
    chain, star, axial = ca.Hierarchy.grid([4, 2]), ca.Graph.star([(4,), (4,)], (2,)), ca.Graph.axial((2, 2))
    assert get_method("exact").accepts(chain) and get_method("exact").accepts(star)
    assert not get_method("exact").accepts(axial) and get_method("dual").accepts(axial)
    get_method("exact").check_structure(star)
    with pytest.raises(ValueError, match=r"use method 'dual' or 'cvxpylayers'"):
        get_method("exact").check_structure(axial)


def test_a_chain_method_refused_on_separate_components_says_why():
    two_chains = ca.Graph([(4,), (2,), (4,), (2,)], [(0, 1), (2, 3)])
    chain_only = Method("chain_only", lambda *args: None, "a method for chains")
    with pytest.raises(ValueError, match=r"is a forest: it has 2 separate components; use method 'exact' or 'dual'"):
        chain_only.check_structure(two_chains)


def test_the_records_name_the_options_solve_documents():
    """solve's docstring lists the options of ``"dual"``; ``"cvxpylayers"`` validates its own
    (``options`` None); the other methods take none.  Each documented one is accepted."""
    assert {name: REGISTRY[name].options for name in ca.METHODS} == {
        "softmax": frozenset(), "exact": frozenset(), "cvxpylayers": None, "learned_dual": frozenset(),
        "dual": frozenset({"tol", "gap_tol", "max_iter", "strict", "record_history", "init", "newton",
                           "warm_start", "dtype"})}
    inst = random_instance("1d-2lvl", batch=1)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-8, gap_tol=1e-8, max_iter=200,
                   strict=True, record_history=True, newton="auto", warm_start="auto", dtype=torch.float64)
    assert bool(sol.info["converged"].all()) and "history" in sol.info


# ----------------------------------------------------------------------------- ca_rev79 (strict xfail: known defects)

def test_ca_rev79_solve_runs_a_registered_methods_check_options_before_any_work():
    """methods.py: ``check_options`` validates option values before any work, and a method
    function is called by ``solve`` after every input has been validated.  ``solve`` checks
    the option names only (``check_option_names``); a registered method's ``check_options``
    is never called, so ``alpha="bad"`` reached the method function."""
    calls = []

    def function(scores, h, temps, duals, options):
        calls.append(dict(options))
        return [torch.softmax(s, -1) for s in scores], None, {}

    def check(options, h):
        if not isinstance(options.get("alpha", 1.0), float):
            raise TypeError(f"option alpha must be a float, got {options['alpha']!r}")

    register_method(Method("ca_rev79_toy", function, "toy", options=frozenset({"alpha"}), has_duals=False,
                           structures="graph", check_options=check))
    h = ca.Hierarchy.grid([(4,), (2,)])
    try:
        with pytest.raises(TypeError, match="alpha"):
            ca.solve([torch.zeros(1, 4), torch.zeros(1, 2)], h, "ca_rev79_toy", alpha="bad")
        assert calls == []
    finally:
        REGISTRY.pop("ca_rev79_toy", None)


# ---- ca_rev115 (strict xfail: review of 0646abe)

def test_ca_rev115_a_map_with_nested_coarsenings_is_not_called_unnested():
    """Run: a 4×4 map pooled onto its 2×2 grid (edge 0 → 1) and onto 3 regions that are unions of
    those grid blocks (edge 0 → 2: blocks (0,0) → 0, (0,1) → 1, (1,·) → 2), then
    ``ca.solve(..., "exact")``.  Expected: either `exact` solves it (it is the chain 0 → 1 → 2
    with parents [0, 1, 2, 2], whose closed form `dual` matches to 1.6e-15), or a refusal
    that describes the graph.  Observed: ValueError "map 0 has 2 coarsenings (map 1 (edge 0),
    map 2 (edge 1)), which do not nest; use method 'dual' or 'cvxpylayers'": they do nest, and
    the way to `exact` (the edge 1 → 2) is not named (methods.Method.check_structure appends
    "which do not nest" to every graph's reason)."""
    rows = torch.arange(4)[:, None].expand(4, 4)
    cols = torch.arange(4)[None, :].expand(4, 4)
    regions = torch.where(rows < 2, cols // 2, torch.full_like(cols, 2))  # unions of the 2×2 grid's blocks
    g = ca.Graph([(4, 4), (2, 2), 3], [(0, 1), (0, 2, regions)])
    chain = ca.Graph([(4, 4), (2, 2), 3], [(0, 1), (1, 2, torch.tensor([0, 1, 2, 2]))])
    torch.manual_seed(0)
    scores = [torch.randn((2,) + s, dtype=torch.float64) for s in g.shapes]
    try:
        sol = ca.solve(scores, g, "exact")
    except ValueError as err:  # (fixed: the refusal says they nest and names the edge that makes it a chain)
        assert "do not nest" not in str(err) and "which nest" in str(err), str(err)
        assert "edge 1 (0 → 2) can be replaced by an edge 1 → 2" in str(err), str(err)
    else:
        want = ca.solve(scores, chain, "exact")
        for p, q in zip(sol.probs, want.probs):
            torch.testing.assert_close(p, q)


# ---- ca_rev182 (review of f2fdd85; its strict xfails now pass)


def test_ca_rev182_every_exported_name_is_documented_in_design_md():
    """``convex_attention.__all__`` exports ``METHODS`` (the built-in method names),
    ``register_method`` (adds a method to the registry, which ``solve`` sees at once) and
    ``__version__``; docs/design.md, the public API reference, mentions none of the three (it
    names ``ca.REGISTRY`` and ``ca.get_method`` only).  Expected: every exported name appears
    in design.md."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text(encoding="utf-8")
    missing = [name for name in ca.__all__ if not re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text)]
    assert missing == [], f"exported but never documented in design.md: {missing}"
