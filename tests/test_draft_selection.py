"""Drafts worth their cost (spiffy_triton/decoding/: acceptance.py, selection.py): acceptance
estimates (graph prior, chaining through parents, online rates, lower bounds) and the selection
rule (extremes, parents first, optimal on consistent estimates, bad input).
"""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
from cost_fixtures import GRAPH

from spiffy_triton.decoding import budget as cm
from spiffy_triton.decoding.acceptance import (
    AcceptanceEstimator,
    calibration_prior,
    prior_path_probability,
)
from spiffy_triton.decoding.drafting import DraftCandidate
from spiffy_triton.decoding.selection import select_drafts
from spiffy_triton.graph import DraftGraph, expected_advance

# --------------------------------------------------------------------------- acceptance


def test_prior_path_probability_matches_the_graph_prior():
    # One-node graphs: expected advance = the node's reach through its own subsets only when
    # those are in the graph; with every subset present the two agree.
    formula = ((1, 1), (2, 1))
    lattice = [frozenset({(1, 1)}), frozenset({(2, 1)}), frozenset(formula)]
    full = expected_advance(lattice) - expected_advance(lattice[:2])
    assert prior_path_probability(formula) == pytest.approx(full)
    assert prior_path_probability(((1, 1),)) == pytest.approx(0.7 * 0.9)


def cand(node, pairs, probs):
    positions = tuple(p for p, _ in pairs)
    tokens = tuple(t for _, t in pairs)
    return DraftCandidate(node, positions, tokens, tuple(probs))


def test_estimates_chain_through_parents():
    est = AcceptanceEstimator(GRAPH, prior=[0.8, 0.4, 0.1, 0.2], prior_strength=4)
    assert est.cond_prior == pytest.approx([0.8, 0.5, 0.1, 0.5])
    cands = [
        cand(0, [(3, 10)], [0.9]),
        cand(1, [(3, 10), (5, 11)], [0.9, 0.8]),
        cand(2, [(5, 11)], [0.8]),
        cand(3, [(3, 10), (5, 11), (0, 12)], [0.9, 0.8, 0.7]),
    ]
    e = est.estimates(cands)
    assert e == pytest.approx([0.8, 0.8 * 0.5, 0.1, 0.8 * 0.5 * 0.5])
    # without its parent filled, a node's parent is the root
    assert est.estimates([cands[1]]) == pytest.approx([0.5])


def test_observe_counts_hits_misses_and_skips_the_unknown():
    est = AcceptanceEstimator(GRAPH, prior=[0.5, 0.5, 0.5, 0.5])
    a, b, c = (3, 10), (5, 11), (0, 12)
    cands = [
        cand(0, [a], [0.9]),
        cand(1, [a, b], [0.9, 0.8]),
        cand(2, [b], [0.8]),
        cand(3, [a, b, c], [0.9, 0.8, 0.7]),
    ]
    est.estimates(cands)
    # The walk went root -> {a} -> {a, b} and stopped there (unverified).
    est.observe(cands, [frozenset({a}), frozenset({a, b})])
    assert est.hits == [1, 1, 0, 0]
    # node 2 missed (root stepped to {a}); node 3's parent {a, b} was the last state: unknown
    assert est.observed == [1, 1, 1, 0]
    est.estimates(cands)
    # root -> {(3, 99)}: a miss for the root's children; deeper nodes' parents never reached
    est.observe(cands, [frozenset({(3, 99)})])
    assert est.hits == [1, 1, 0, 0] and est.observed == [2, 1, 2, 0]
    # node 1 filled without its parent: its stage is the root; the walk stopped at {a},
    # inside it: unknown, unless {a} completed the block (then a miss)
    est.estimates([cands[1]])
    est.observe([cands[1]], [frozenset({a})])
    assert est.observed[1] == 1
    est.estimates([cands[1]])
    est.observe([cands[1]], [frozenset({a})], complete=True)
    assert est.observed[1] == 2 and est.hits[1] == 1


def test_online_rates_move_from_prior_to_data():
    est = AcceptanceEstimator(GRAPH, prior=[0.1, 0.1, 0.1, 0.1], prior_strength=2)
    c = [cand(0, [(1, 5)], [0.5])]
    for _ in range(50):
        est.estimates(c)
        est.observe(c, [frozenset({(1, 5)})])
    assert est.cond_rate(0) == pytest.approx((0.2 + 50) / 52)
    # the marginals enter by band: misses at low token probability do not drag down the
    # estimate of a confident candidate of the same node beyond the shrinkage
    banded = AcceptanceEstimator(GRAPH, prior=[0.5, 0.5, 0.5, 0.5], prior_strength=2)
    unsure, sure = [cand(0, [(1, 5)], [0.3])], [cand(0, [(1, 5)], [0.99])]
    for _ in range(20):
        banded.estimates(unsure)
        banded.observe(unsure, [frozenset({(1, 6)})])
        banded.estimates(sure)
        banded.observe(sure, [frozenset({(1, 5)})])
    overall = banded.cond_rate(0)
    assert overall == pytest.approx((1.0 + 20) / 42)
    assert banded.band_observed[0] == [20, 0, 0, 20] and banded.band_hits[0] == [0, 0, 0, 20]
    assert banded.estimates(sure)[0] == pytest.approx((20 + 2 * overall) / 22)
    assert banded.estimates(unsure)[0] == pytest.approx((0 + 2 * overall) / 22)
    # a band never seen falls back to the node's rate
    assert banded.estimates([cand(0, [(1, 5)], [0.6])])[0] == pytest.approx(overall)
    # the spread is the band posterior's standard deviation: it shrinks as the band is seen
    rate = banded.estimates(sure)[0]
    assert banded.spread[0] == pytest.approx(math.sqrt(rate * (1 - rate) / (20 + 2 + 1)))
    banded.estimates([cand(0, [(1, 5)], [0.6])])
    assert banded.spread[0] == pytest.approx(math.sqrt(overall * (1 - overall) / (0 + 2 + 1)))


def test_decisions_use_a_lower_bound_of_the_estimate():
    assert cm._lower(0.5, 0.0) == 0.5 and cm._lower(0.0, 0.3) == 0.0
    assert cm._lower(0.5, 0.05) == pytest.approx(0.5 - 0.05, abs=0.005)
    assert 0 < cm._lower(0.01, 0.3) < 0.01


def test_estimator_and_prior_validation(tmp_path):
    with pytest.raises(ValueError, match="prior has 1 rates"):
        AcceptanceEstimator(GRAPH, prior=[0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        AcceptanceEstimator(GRAPH, prior=[0.5, 0.5, 1.5, 0.5])
    with pytest.raises(ValueError, match="prior_strength"):
        AcceptanceEstimator(GRAPH, prior_strength=0)
    path = tmp_path / "g.json"
    data = GRAPH.to_dict()
    data["counts"] = [40, 20, 5, 10]
    data["calibration"] = {"ranked_steps": 50, "trace_steps": 60}
    path.write_text(json.dumps(data))
    assert calibration_prior(path) == pytest.approx([0.8, 0.4, 0.1, 0.2])
    GRAPH.save(path)
    with pytest.raises(ValueError, match="not a calibrated graph"):
        calibration_prior(path)


# ---------------------------------------------------------------------------- selection


def test_selection_extremes():
    cands = [cand(0, [(1, 1)], [0.9]), cand(2, [(2, 1)], [0.5])]
    # A draft costs as much as the root and is not surely accepted: plain step.
    plain = select_drafts(GRAPH, cands, [0.9, 0.5], lambda k: 10.0 * (1 + k))
    assert plain.chosen == () and plain.expected_advance == 1 and plain.predicted_ms == 10
    # Free drafts: every one with a positive estimate.
    free = select_drafts(GRAPH, cands, [0.9, 0.5], lambda k: 10.0)
    assert [c.node for c in free.chosen] == [0, 2]
    assert free.expected_advance == pytest.approx(2.4)
    capped = select_drafts(GRAPH, cands, [0.9, 0.5], lambda k: 10.0, max_drafts=1)
    assert [c.node for c in capped.chosen] == [0]
    # a gain (here 5 %) within the cost model's error margin (10 %) is no gain
    small = select_drafts(GRAPH, cands[:1], [0.05], lambda k: 10.0)
    assert [c.node for c in small.chosen] == [0]
    assert select_drafts(GRAPH, cands[:1], [0.05], lambda k: 10.0, min_gain=0.1).chosen == ()
    with pytest.raises(ValueError, match="min_gain"):
        select_drafts(GRAPH, cands, [0.9, 0.5], lambda k: 10.0, min_gain=-1)


def test_a_child_is_never_chosen_without_its_parent():
    a, b = (1, 7), (2, 8)
    cands = [cand(0, [a], [0.5]), cand(1, [a, b], [0.5, 0.9])]
    # Inconsistent estimates (child above parent): the child still needs its parent first.
    sel = select_drafts(GRAPH, cands, [0.1, 0.9], lambda k: 10.0 + 0.5 * k, max_drafts=1)
    assert [c.node for c in sel.chosen] == [0]


def connected_subsets(graph, nodes):
    for r in range(len(nodes) + 1):
        for subset in itertools.combinations(nodes, r):
            chosen = set(subset)
            ok = all(
                not [p for p in graph.parents(n) if p in nodes]
                or any(
                    p in chosen
                    for p in graph.parents(n)
                    if p in nodes and not any(
                        set(graph.nodes[p]) < set(graph.nodes[o])
                        for o in graph.parents(n) if o in nodes
                    )
                )
                for n in subset
            )  # fmt: skip
            if ok:
                yield subset


@pytest.mark.parametrize("seed", range(6))
def test_selection_is_optimal_for_consistent_estimates(seed):
    """With estimates that never grow from parent to child (as the chained estimator gives)
    and a cost growing with the draft count, the chosen set has the best advance per cost of
    every connected subset (brute force)."""
    rng = random.Random(seed)
    graph = DraftGraph.default(7)
    cands = [cand(n, [(p, t) for p, t in f], [0.5] * len(f)) for n, f in enumerate(graph.nodes)]
    est = {}
    for n in sorted(range(len(graph)), key=lambda n: len(graph.nodes[n])):
        parents = graph.parents(n)
        cap = max((est[p] for p in parents), default=1.0)
        est[n] = cap * rng.uniform(0.2, 1.0)
    estimates = [est[n] for n in range(len(graph))]
    base, per_draft = rng.uniform(5, 20), rng.uniform(0.5, 15)

    def cost(k):
        return base + per_draft * k

    sel = select_drafts(graph, cands, estimates, cost)
    best = max(
        (1 + sum(estimates[n] for n in s)) / cost(len(s))
        for s in connected_subsets(graph, range(len(graph)))
    )
    assert sel.expected_advance / sel.predicted_ms == pytest.approx(best)
    assert sel.expected_advance / sel.predicted_ms >= 1 / cost(0)  # never worse than plain


def test_selection_rejects_bad_input():
    cands = [cand(0, [(1, 1)], [0.9])]
    with pytest.raises(ValueError, match="estimates for"):
        select_drafts(GRAPH, cands, [0.1, 0.2], lambda k: 1.0)
    with pytest.raises(ValueError, match="same graph node"):
        select_drafts(GRAPH, cands * 2, [0.1, 0.2], lambda k: 1.0)
    with pytest.raises(ValueError, match="positive and finite"):
        select_drafts(GRAPH, cands, [0.1], lambda k: 0.0)
