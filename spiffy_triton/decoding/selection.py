"""Draft selection of the cost-aware budget: the drafts with the most expected steps per
predicted unit of cost (`select_drafts`).

Selection (`select_drafts`). The walk reaches a draft only through its ancestors, so drafts
are taken greedily by estimate, a node becoming eligible once one of its direct parents (largest
filled strict subsets) is taken or when it has none; the expected advance of the first ``k``
is ``1 + sum of their estimates``. The chosen ``k`` maximises ``advance(k) / cost(k)`` over
``k = 0 .. len(candidates)``; ``k = 0`` (a plain step: one root forward, one step) is always a
candidate, so in expectation auto is never worse than vanilla decoding. The decision is
conservative: each estimate enters about one posterior standard deviation low
(``AcceptanceEstimator.spread``), and drafts are taken only when they beat the plain step by
more than the cost fit's relative standard error (`VerifyCostModel.standard_error`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..graph import DraftGraph
from .acceptance import graph_structure


@dataclass(frozen=True)
class Selection:
    chosen: tuple  # the candidates to verify, in node order
    expected_advance: float  # expected steps this forward advances
    predicted_ms: float  # predicted verify time
    considered: int  # filled candidates it chose from


def select_drafts(
    graph: DraftGraph,
    candidates: Sequence,
    estimates: Sequence[float],
    cost_ms: Callable[[int], float],
    *,
    max_drafts: int | None = None,
    min_gain: float = 0.0,
    per_step_ms: float = 0.0,
) -> Selection:
    """The candidates maximising expected steps advanced / predicted cost (module docstring).

    `estimates[i]` is candidate ``i``'s walk-through probability, `cost_ms(k)` the predicted
    time of a verify iteration with ``k`` drafts; `per_step_ms` the host time every step
    advanced costs besides (so ``k`` drafts cost ``cost_ms(k) + advance * per_step_ms``);
    `max_drafts` caps ``k``. Drafts are taken only if their advance per cost beats the plain
    step's by the relative margin `min_gain`.
    """
    if not (min_gain >= 0 and math.isfinite(min_gain)):
        raise ValueError(f"min_gain must be a finite number >= 0, got {min_gain!r}")
    if len(estimates) != len(candidates):
        raise ValueError(f"{len(estimates)} estimates for {len(candidates)} candidates")
    by_node = {c.node: i for i, c in enumerate(candidates)}
    if len(by_node) != len(candidates):
        raise ValueError("two candidates for the same graph node")
    present = set(by_node)
    _, direct_parents = graph_structure(graph, frozenset(present))
    parents = {n: set(direct_parents[n]) for n in present}
    limit = len(candidates) if max_drafts is None else min(max_drafts, len(candidates))
    order: list[int] = []
    taken: set[int] = set()
    while len(order) < limit:
        eligible = [n for n in present - taken if not parents[n] or parents[n] & taken]
        if not eligible:
            break
        # Highest estimate first; ties: fewer pairs, then node order.
        pick = min(eligible, key=lambda n: (-estimates[by_node[n]], len(graph.nodes[n]), n))
        taken.add(pick)
        order.append(pick)
    if not (per_step_ms >= 0 and math.isfinite(per_step_ms)):
        raise ValueError(f"per_step_ms must be a finite number >= 0, got {per_step_ms!r}")
    plain_cost = _positive(cost_ms(0), 0) + per_step_ms
    best_k, best_ratio = 0, (1.0 + min_gain) / plain_cost
    best_cost, advance, best_advance = plain_cost, 1.0, 1.0
    for k, node in enumerate(order, start=1):
        advance += estimates[by_node[node]]
        cost = _positive(cost_ms(k), k) + advance * per_step_ms
        # a tie goes to more drafts: a draft that costs nothing is worth verifying
        if advance / cost >= best_ratio * (1 - 1e-12):
            best_k, best_ratio, best_cost, best_advance = k, advance / cost, cost, advance
    chosen = tuple(candidates[by_node[n]] for n in sorted(order[:best_k]))
    return Selection(chosen, best_advance, best_cost, len(candidates))


def _positive(cost: float, k: int) -> float:
    if not (cost > 0 and math.isfinite(cost)):
        raise ValueError(f"predicted cost of {k} drafts must be positive and finite, got {cost}")
    return cost
