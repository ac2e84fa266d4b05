"""Filling draft-graph formulas into the root state (docs/DESIGN.md §2, §6).

``P_last`` is the most recent marginals of the block (top-k tokens and their probabilities per
position). Position rank ``i`` is the ``i``-th most confident position *still masked in the
root* under ``P_last`` (confidence = top-1 probability; ties to the lower position); token rank
``j`` is that position's ``j``-th most probable token. A formula whose ranks do not exist
(fewer masked positions than its largest position rank) or that would write the mask id is
skipped, and states already produced by an earlier node are dropped, so every verified draft
is a distinct state.

Dynamic pruning keeps the ``max_drafts`` best nodes by a score; the default score is the
geometric mean of the formula's token probabilities under ``P_last`` (which covers its
parents' pairs, since a parent's pairs are a subset). Both the filler and the score are
pluggable (`fill_drafts(..., filler=, score=)`); calibration and sampling-aware strategies
plug in there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .. import dispatch
from ..graph import DraftGraph, Formula, PhasedDraftGraph
from ..types import MarginalsOutput


@dataclass(frozen=True)
class DraftCandidate:
    node: int  # index of the graph node it comes from
    positions: tuple[int, ...]  # block offsets it fills
    tokens: tuple[int, ...]
    probs: tuple[float, ...]  # P_last probabilities of those tokens


@dataclass(frozen=True)
class Drafts:
    """Draft states to verify: ``states [D, L]`` (on the root's device) and their graph nodes
    (empty for drafts of no graph)."""

    states: torch.Tensor
    nodes: tuple[int, ...]

    def __len__(self) -> int:
        return self.states.shape[0]


Filler = Callable[[DraftGraph, torch.Tensor, MarginalsOutput, int], list[DraftCandidate]]
Score = Callable[[DraftCandidate], float]


def geometric_mean_score(candidate: DraftCandidate) -> float:
    """Geometric mean of the candidate's token probabilities under ``P_last``."""
    logs = [math.log(p) if p > 0 else -math.inf for p in candidate.probs]
    return math.exp(sum(logs) / len(logs))


def rank_masked_positions(
    p_last: MarginalsOutput, root_state: torch.Tensor, mask_id: int, backend: str = "auto"
) -> list[int]:
    """Block offsets of the root's masked positions, most confident first under ``P_last``."""
    masked = root_state == mask_id
    confidence = p_last.topk_probs[:, 0].to(torch.float64)
    order = dispatch.rank_positions(confidence[None], masked[None], backend=backend)[0]
    return order[: int(masked.sum())].tolist()


def probability_filler(
    graph: DraftGraph,
    root_state: torch.Tensor,
    p_last: MarginalsOutput,
    mask_id: int,
    *,
    backend: str = "auto",
) -> list[DraftCandidate]:
    """Fill every node by plain ``P_last`` ranks (the filler of the paper)."""
    ranked = rank_masked_positions(p_last, root_state, mask_id, backend)
    top_k = p_last.topk_tokens.shape[1]
    if graph.max_token_rank > top_k:
        raise ValueError(
            f"P_last has top_k={top_k} but the graph uses token rank {graph.max_token_rank}"
        )
    # One host copy of the few rows the graph can touch.
    rows = ranked[: graph.max_position_rank]
    tokens = p_last.topk_tokens[rows].tolist()
    probs = p_last.topk_probs[rows].to(torch.float64).tolist()
    candidates = []
    for node, formula in enumerate(graph.nodes):
        candidate = _fill_formula(node, formula, rows, tokens, probs, mask_id)
        if candidate is not None:
            candidates.append(candidate)
    return candidates


def phased_filler(graph: PhasedDraftGraph, *, backend: str = "auto") -> Filler:
    """A `Filler` that fills the root's phase graph of `graph` (by the root's masked count)
    by plain ``P_last`` ranks; node indices are those of `graph` (the union of the phases)."""
    if not isinstance(graph, PhasedDraftGraph):
        raise TypeError(f"graph must be a PhasedDraftGraph, got {type(graph).__name__}")

    def fill(_, root_state, p_last, mask_id) -> list[DraftCandidate]:
        num_masked = int((root_state == mask_id).sum())
        phase = graph.phase_graph(num_masked)
        candidates = probability_filler(phase, root_state, p_last, mask_id, backend=backend)
        return [
            DraftCandidate(graph.index(phase.nodes[c.node]), c.positions, c.tokens, c.probs)
            for c in candidates
        ]

    return fill


def _fill_formula(
    node: int,
    formula: Formula,
    rows: Sequence[int],
    tokens: Sequence[Sequence[int]],
    probs: Sequence[Sequence[float]],
    mask_id: int,
) -> DraftCandidate | None:
    if formula[-1][0] > len(rows):  # pairs are sorted by position rank
        return None
    filled = [(rows[i - 1], tokens[i - 1][j - 1], probs[i - 1][j - 1]) for i, j in formula]
    if any(token == mask_id for _, token, _ in filled):
        return None
    filled.sort()
    return DraftCandidate(
        node=node,
        positions=tuple(p for p, _, _ in filled),
        tokens=tuple(t for _, t, _ in filled),
        probs=tuple(q for _, _, q in filled),
    )


def fill_drafts(
    graph: DraftGraph,
    root_state: torch.Tensor,
    p_last: MarginalsOutput,
    mask_id: int,
    *,
    max_drafts: int | None = None,
    filler: Filler | None = None,
    score: Score = geometric_mean_score,
    backend: str = "auto",
) -> Drafts:
    """Draft states of `graph` filled into `root_state` ``[L]`` under `p_last` (``[L]`` rows).

    At most `max_drafts` drafts (default: all nodes), chosen by `score` (ties: node order),
    distinct from each other, returned in node order.
    """
    if root_state.dim() != 1:
        raise ValueError(f"root_state must be [L], got shape {tuple(root_state.shape)}")
    if p_last.topk_tokens.shape[0] != root_state.shape[0]:
        raise ValueError(
            f"p_last has {p_last.topk_tokens.shape[0]} rows, the block has {root_state.shape[0]}"
        )
    if filler is None:
        candidates = probability_filler(graph, root_state, p_last, mask_id, backend=backend)
    else:
        candidates = filler(graph, root_state, p_last, mask_id)
    unique: dict[tuple[tuple[int, int], ...], DraftCandidate] = {}
    for c in candidates:
        unique.setdefault(tuple(zip(c.positions, c.tokens)), c)
    kept = list(unique.values())
    if max_drafts is not None and len(kept) > max_drafts:
        best = sorted(range(len(kept)), key=lambda k: (-score(kept[k]), kept[k].node))
        kept = [kept[k] for k in sorted(best[:max_drafts])]
    states = root_state.repeat(len(kept), 1)
    if kept:
        rows = [r for r, c in enumerate(kept) for _ in c.positions]
        cols = [p for c in kept for p in c.positions]
        values = [t for c in kept for t in c.tokens]
        states_cpu = states.cpu()
        states_cpu[rows, cols] = torch.tensor(values, dtype=states.dtype)
        states = states_cpu.to(root_state.device)
    return Drafts(states=states, nodes=tuple(c.node for c in kept))
