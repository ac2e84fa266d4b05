"""DraftGraph: formulas, derived parents, validation, JSON, default graphs."""

from __future__ import annotations

import itertools
import json

import pytest

from spiffy_triton.graph import (
    MAX_DEFAULT_BUDGET,
    PHASED_FORMAT,
    DraftGraph,
    PhasedDraftGraph,
    expected_advance,
    load_graph,
)


def test_formulas_are_canonical_and_parents_are_strict_subsets():
    g = DraftGraph([[(2, 1), (1, 1)], [(1, 1)], [(2, 1)], [(1, 1), (2, 1), (3, 2)], [(1, 2)]])
    assert g.nodes[0] == ((1, 1), (2, 1))  # sorted by position rank
    assert g.parents(0) == (1, 2)  # two parents: a graph, not a tree
    assert g.parents(1) == ()
    assert g.parents(3) == (0, 1, 2)
    assert g.immediate_parents(3) == (0,)
    assert g.parents(4) == ()  # (1, 2) is not a subset of anything else
    assert g.children(1) == (0, 3)
    assert (g.max_position_rank, g.max_token_rank, g.depth) == (3, 2, 3)
    assert g.index([(2, 1), (1, 1)]) == 0
    assert g.is_connected()
    assert not DraftGraph([[(1, 1), (2, 1)]]).is_connected()


@pytest.mark.parametrize(
    "nodes, message",
    [
        ([], "at least one node"),
        ([[]], "at least one pair"),
        ([[(0, 1)]], ">= 1"),
        ([[(1, 0)]], ">= 1"),
        ([[(1, -2)]], ">= 1"),
        ([[(1.0, 1)]], "must be an int"),
        ([[(True, 1)]], "must be an int"),
        ([[(1, 1, 1)]], "pair must be"),
        ([["ab"]], "pair must be"),
        ([[(1, 1), (1, 2)]], "position rank used twice"),
        ([[(1, 1)], [(1, 1)]], "same formula"),
        ([[(1, 1), (2, 1)], [(2, 1), (1, 1)]], "same formula"),
        ([5], "a formula is a list"),
    ],
)
def test_invalid_graphs_raise_clear_errors(nodes, message):
    with pytest.raises(ValueError, match=message):
        DraftGraph(nodes)


def test_json_round_trip(tmp_path):
    g = DraftGraph([[(1, 1)], [(1, 1), (2, 1)], [(1, 2)], [(3, 1)]], name="mine")
    path = g.save(tmp_path / "g.json")
    loaded = DraftGraph.load(path)
    assert loaded == g and loaded.name == "mine"
    assert [loaded.parents(k) for k in range(len(g))] == [g.parents(k) for k in range(len(g))]
    data = json.loads(path.read_text())
    assert data["format"] == "spiffy-draft-graph" and data["parents"][1] == [0]


def test_json_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        DraftGraph.load(bad)
    with pytest.raises(ValueError, match="not a draft graph"):
        DraftGraph.from_dict({"nodes": [[[1, 1]]]})
    good = DraftGraph([[(1, 1)], [(1, 1), (2, 1)]]).to_dict()
    with pytest.raises(ValueError, match="version"):
        DraftGraph.from_dict({**good, "version": 99})
    with pytest.raises(ValueError, match="parents"):
        DraftGraph.from_dict({**good, "parents": [[], []]})
    with pytest.raises(ValueError, match="nodes"):
        DraftGraph.from_dict({"format": good["format"], "version": good["version"]})


@pytest.mark.parametrize("budget", range(1, MAX_DEFAULT_BUDGET + 1))
def test_default_graphs(budget):
    g = DraftGraph.default(budget)
    assert len(g) == budget
    assert g.is_connected()  # every node reachable one token at a time
    assert g.nodes == DraftGraph.default(MAX_DEFAULT_BUDGET).nodes[:budget]  # nested budgets
    assert g.nodes[0] == ((1, 1),)


def test_default_graph_is_greedy_optimal_under_its_prior():
    # Small budgets: the greedy choice equals the exhaustive best connected set of candidates.
    pairs = [(p, t) for p in range(1, 4) for t in range(1, 3)]
    candidates = {frozenset()}
    for _ in range(3):
        candidates |= {c | {q} for c in candidates for q in pairs if q[0] not in {p for p, _ in c}}
    candidates.discard(frozenset())
    for budget in (1, 2, 3):
        best = max(
            expected_advance(list(s))
            for s in itertools.combinations(candidates, budget)
            if DraftGraph([sorted(n) for n in s]).is_connected()
        )
        chosen = [frozenset(f) for f in DraftGraph.default(budget).nodes]
        assert expected_advance(chosen) == pytest.approx(best)
    advances = [
        expected_advance([frozenset(f) for f in DraftGraph.default(d).nodes]) for d in (1, 4, 16)
    ]
    assert advances[0] < advances[1] < advances[2]


@pytest.mark.parametrize("budget", [0, 17, -1, 2.0, True, "8"])
def test_default_budget_errors(budget):
    with pytest.raises(ValueError, match="budget"):
        DraftGraph.default(budget)


def test_validate_for_block_and_subgraph_and_dot():
    g = DraftGraph.default(16)
    with pytest.raises(ValueError, match="block_length"):
        g.validate_for_block(g.max_position_rank - 1)
    g.validate_for_block(g.max_position_rank)
    sub = g.subgraph([0, 1])
    assert sub.nodes == g.nodes[:2]
    dot = g.to_dot()
    assert dot.startswith("digraph") and "root -> n0" in dot and "n0 -> n1" in dot


# --------------------------------------------------------------------------- the one loader


def _phased_graph() -> PhasedDraftGraph:
    return PhasedDraftGraph(
        [(1, 3, DraftGraph.default(2)), (4, 8, DraftGraph([[(1, 1)], [(2, 1)], [(1, 2)]]))],
        name="two-phases",
    )


def test_one_loader_reads_plain_and_phased_graphs(tmp_path):
    """`DraftGraph.load` (what `generate(graph=path)` uses) and calibration's `load_graph`
    are one loader: both read the phased JSON that calibration writes."""
    from spiffy_triton import calibration

    assert calibration.load_graph is load_graph
    phased = _phased_graph()
    path = phased.save(tmp_path / "phased.json")
    loaded = DraftGraph.load(path)
    assert isinstance(loaded, PhasedDraftGraph) and loaded.name == "two-phases"
    assert [(lo, hi, g.nodes) for lo, hi, g in loaded.phases] == [
        (lo, hi, g.nodes) for lo, hi, g in phased.phases
    ]
    assert loaded == phased  # the union of the phases, as a DraftGraph
    assert PhasedDraftGraph.load(path).phases == loaded.phases
    plain = DraftGraph.default(3).save(tmp_path / "plain.json")
    assert type(DraftGraph.load(plain)) is DraftGraph
    with pytest.raises(ValueError, match="holds a DraftGraph, not a PhasedDraftGraph"):
        PhasedDraftGraph.load(plain)


def test_loader_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read draft graph file .*missing.json"):
        DraftGraph.load(tmp_path / "missing.json")
    bad = tmp_path / "bad_phase.json"
    bad.write_text(json.dumps({"format": PHASED_FORMAT, "version": 1, "phases": []}))
    with pytest.raises(ValueError, match="bad_phase.json: phased draft graph JSON needs"):
        DraftGraph.load(bad)


def test_generate_decodes_with_a_phased_graph_file(tmp_path):
    import torch
    from utils import tiny_random_llada

    from spiffy_triton.decoding import generate

    model = tiny_random_llada(0)
    ids = torch.tensor([[5, 6, 7, 8]])
    path = _phased_graph().save(tmp_path / "phased.json")
    kw = {"gen_length": 8, "block_length": 8, "backend": "torch"}
    out = generate(model, ids, graph=str(path), max_drafts=None, **kw)
    assert torch.equal(out.tokens, generate(model, ids, **kw).tokens)
    assert len(out.stats.to_dict()["node_verified"]) == len(_phased_graph())  # the union
