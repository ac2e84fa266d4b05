"""Dynamic pruning: geometric-mean node scores capped by parents, connected selection of the
best `max_drafts`, and pruned Spiffy decoding staying lossless."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from utils import tiny_random_llada

from spiffy_triton.decoding import generate
from spiffy_triton.decoding.pruning import (
    direct_parents,
    geometric_mean,
    node_scores,
    prune,
    pruning_filler,
)
from spiffy_triton.graph import DraftGraph


@dataclass(frozen=True)
class Candidate:
    node: int
    probs: tuple[float, ...]


# 0: (1,1)   1: (2,1)   2: (1,1)(2,1)   3: (1,2)   4: (1,1)(2,1)(3,1)   5: (4,1)(5,1)
GRAPH = DraftGraph(
    [[(1, 1)], [(2, 1)], [(1, 1), (2, 1)], [(1, 2)], [(1, 1), (2, 1), (3, 1)], [(4, 1), (5, 1)]]
)


def candidates(**probs_by_node):
    return [Candidate(int(k[1:]), tuple(v)) for k, v in probs_by_node.items()]


def test_geometric_mean():
    assert geometric_mean([0.25]) == pytest.approx(0.25)
    assert geometric_mean([0.5, 0.125]) == pytest.approx(0.25)
    assert geometric_mean([0.9, 0.0]) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        geometric_mean([])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        geometric_mean([1.5])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        geometric_mean([math.nan])


def test_direct_parents_are_the_largest_present_subsets():
    present = set(range(len(GRAPH)))
    assert direct_parents(GRAPH, 4, present) == (2,)
    assert direct_parents(GRAPH, 4, present - {2}) == (0, 1)
    assert direct_parents(GRAPH, 2, present) == (0, 1)
    assert direct_parents(GRAPH, 5, present) == ()


def test_node_scores_cap_children_by_their_best_parent():
    c = candidates(n0=[0.2], n1=[0.9], n2=[0.2, 0.9], n3=[0.05], n4=[0.2, 0.9, 0.99], n5=[0.8, 0.8])
    scores = node_scores(GRAPH, c)
    assert scores[0] == pytest.approx(0.2)
    assert scores[1] == pytest.approx(0.9)
    assert scores[2] == pytest.approx(math.sqrt(0.2 * 0.9))  # below its best parent (0.9)
    # Own geometric mean 0.56 exceeds its only direct parent's score 0.42: capped.
    assert scores[4] == pytest.approx(math.sqrt(0.2 * 0.9))
    assert scores[5] == pytest.approx(0.8)  # no parent in the graph: its own mean


def test_prune_keeps_the_best_connected_nodes_in_node_order():
    c = candidates(n0=[0.2], n1=[0.9], n2=[0.2, 0.9], n3=[0.05], n4=[0.2, 0.9, 0.99], n5=[0.8, 0.8])
    assert [x.node for x in prune(GRAPH, c, 1)] == [1]
    assert [x.node for x in prune(GRAPH, c, 2)] == [1, 5]
    assert [x.node for x in prune(GRAPH, c, 4)] == [1, 2, 4, 5]  # 4 ties 2: 2 first (parent)
    assert [x.node for x in prune(GRAPH, c, 6)] == [0, 1, 2, 3, 4, 5]
    assert [x.node for x in prune(GRAPH, c, None)] == [0, 1, 2, 3, 4, 5]


def test_prune_never_takes_a_child_before_one_of_its_parents():
    # The child's own probabilities are high, its parents' low: without the cap and the
    # connectivity rule, the child would be verified with no verified way to reach it.
    c = candidates(n0=[0.1], n1=[0.1], n2=[0.1, 0.1], n4=[0.1, 0.1, 1.0], n5=[0.05, 0.05])
    chosen = [x.node for x in prune(GRAPH, c, 3)]
    assert chosen == [0, 1, 2]
    for k in (1, 2, 3, 4):
        taken = {x.node for x in prune(GRAPH, c, k)}
        for node in taken:
            parents = direct_parents(GRAPH, node, {x.node for x in c})
            assert not parents or set(parents) & taken


def test_prune_rejects_bad_input():
    c = candidates(n0=[0.5], n1=[0.4])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_drafts must be an int >= 1"):
            prune(GRAPH, c, bad)
    with pytest.raises(ValueError, match="two candidates for graph node 0"):
        prune(GRAPH, [Candidate(0, (0.5,)), Candidate(0, (0.4,))], 1)
    with pytest.raises(ValueError, match="not a node"):
        prune(GRAPH, [Candidate(9, (0.5,)), Candidate(0, (0.4,))], 1)
    with pytest.raises(ValueError, match="max_drafts must be an int >= 1"):
        pruning_filler(0)


def test_pruned_decoding_is_lossless_and_verifies_at_most_max_drafts():
    model = tiny_random_llada(7)
    ids = torch.tensor([[5, 9, 11, 4, 17, 8]])
    kw = {"gen_length": 16, "block_length": 8, "backend": "torch"}
    vanilla = generate(model, ids, **kw)
    graph = DraftGraph.default(8)
    full = generate(model, ids, graph=graph, max_drafts=None, **kw)
    nfe = {}
    for max_drafts in (1, 3):
        out = generate(
            model, ids, graph=graph, filler=pruning_filler(max_drafts), max_drafts=None, **kw
        )
        assert torch.equal(out.tokens, vanilla.tokens)
        assert out.stats.drafts_verified <= max_drafts * out.nfe
        nfe[max_drafts] = out.nfe
    assert vanilla.nfe >= nfe[1] >= nfe[3] >= full.nfe
