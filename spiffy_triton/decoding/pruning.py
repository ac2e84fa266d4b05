"""Dynamic pruning: which of a graph's filled drafts to verify when at most ``max_drafts`` may
be (docs/DESIGN.md §6). Pure functions over the graph and the filled candidates.

A node's own score is the geometric mean of its tokens' probabilities under ``P_last``. A draft
is only worth verifying if the walk can reach it, i.e. through one of its parents, so a node's
score is capped by its best direct parent's score (a parent is a filled node whose pairs are a
strict subset; direct parents are the largest of those):

    score(q) = min(gm(q), max over direct parents p of score(p))      (gm(q) without parents)

The best ``max_drafts`` are taken in descending score (ties: fewer pairs, then node order),
and a node is only taken once one of its filled parents is: the verified set stays connected
to the root. Candidates are any objects with ``.node`` (graph index) and ``.probs`` (the
``P_last`` probabilities of the node's tokens), e.g.
`spiffy_triton.decoding.drafting.DraftCandidate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..graph import DraftGraph


def geometric_mean(probs: Sequence[float]) -> float:
    """Geometric mean of probabilities (0 if any is 0)."""
    if len(probs) == 0:
        raise ValueError("geometric_mean needs at least one probability")
    if any(not 0.0 <= p <= 1.0 or math.isnan(p) for p in probs):
        raise ValueError(f"probabilities must be in [0, 1], got {list(probs)}")
    if min(probs) == 0.0:
        return 0.0
    return math.exp(sum(math.log(p) for p in probs) / len(probs))


def direct_parents(graph: DraftGraph, node: int, present: set[int]) -> tuple[int, ...]:
    """The largest strict-subset parents of `node` among the `present` nodes."""
    parents = [p for p in graph.parents(node) if p in present]
    sets = {p: set(graph.nodes[p]) for p in parents}
    return tuple(p for p in parents if not any(sets[p] < sets[o] for o in parents if o != p))


def node_scores(graph: DraftGraph, candidates: Sequence) -> dict[int, float]:
    """Score of every candidate's node: its geometric mean capped by its best direct
    parent's score (see the module docstring)."""
    own = {c.node: geometric_mean(c.probs) for c in candidates}
    present = set(own)
    scores: dict[int, float] = {}
    # Parents have fewer pairs: score nodes by increasing size.
    for node in sorted(present, key=lambda n: len(graph.nodes[n])):
        parents = direct_parents(graph, node, present)
        if parents:
            scores[node] = min(own[node], max(scores[p] for p in parents))
        else:
            scores[node] = own[node]
    return scores


def prune(graph: DraftGraph, candidates: Sequence, max_drafts: int | None) -> list:
    """The candidates to verify: the best `max_drafts` by `node_scores`, connected to the
    root, in node order. `max_drafts=None` keeps all."""
    if max_drafts is None:
        return sorted(candidates, key=lambda c: c.node)
    if isinstance(max_drafts, bool) or not isinstance(max_drafts, int) or max_drafts < 1:
        raise ValueError(f"max_drafts must be an int >= 1 or None, got {max_drafts!r}")
    by_node = {}
    for c in candidates:
        if c.node in by_node:
            raise ValueError(f"two candidates for graph node {c.node}")
        if not 0 <= c.node < len(graph):
            raise ValueError(f"candidate node {c.node} is not a node of a {len(graph)}-node graph")
        by_node[c.node] = c
    if len(by_node) <= max_drafts:
        return sorted(candidates, key=lambda c: c.node)
    scores = node_scores(graph, candidates)
    present = set(by_node)
    order = sorted(present, key=lambda n: (-scores[n], len(graph.nodes[n]), n))
    parents = {n: set(direct_parents(graph, n, present)) for n in present}
    taken: set[int] = set()
    while len(taken) < max_drafts:
        pick = next(
            (n for n in order if n not in taken and (not parents[n] or parents[n] & taken)), None
        )
        if pick is None:
            break
        taken.add(pick)
    return [by_node[n] for n in sorted(taken)]


def pruning_filler(max_drafts: int | None, *, backend: str = "auto"):
    """A `spiffy_triton.decoding.drafting.Filler` that fills every node by ``P_last`` ranks,
    then keeps the `prune` selection (use with `generate(..., filler=...)`)."""
    if max_drafts is not None and (
        isinstance(max_drafts, bool) or not isinstance(max_drafts, int) or max_drafts < 1
    ):
        raise ValueError(f"max_drafts must be an int >= 1 or None, got {max_drafts!r}")
    from .drafting import probability_filler  # drafting may call prune: import at use

    def fill(graph, root_state, p_last, mask_id):
        candidates = probability_filler(graph, root_state, p_last, mask_id, backend=backend)
        return prune(graph, candidates, max_drafts)

    return fill
