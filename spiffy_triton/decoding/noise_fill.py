"""Noise-aware draft filling for sampling (temperature > 0; docs/DESIGN.md §6).

At temperature ``T > 0`` the decoder picks each token by Gumbel-max of ``logits / T`` with noise
keyed by ``(seed, step, position, vocab id)``, so the noise of every future step is known in
advance. The plain filler ranks positions and tokens by ``P_last`` probability, which is what
the decoder does at ``T = 0`` but not what it does when sampling. `NoiseAwareFiller` instead
predicts the decoder's own trajectory with ``P_last`` held fixed: at step ``s + d`` it scores
every masked position's top-``K`` tokens by ``log P_last / T + g(seed, s + d, position, token)``
(the Gumbel-max the decoder will compute, up to a per-row constant), builds the marginals the
rule would see (chosen token, its probability as confidence) and applies the decoder's own
transition rule (`spiffy_triton.decoding.rules.TransitionRule.apply`: schedule, threshold,
factor, random remasking alike) to get the predicted next state. Then a formula's ranks are
read off that trajectory:

- position rank ``i``: the ``i``-th position the predicted trajectory commits (within one step,
  most confident first); positions it does not reach follow, by ``P_last`` confidence;
- token rank ``j`` of a position: its ``j``-th best token under the noise of the step at which
  the trajectory commits it (``P_last`` probability order for positions it does not reach).

At ``T = 0`` there is no noise and the prediction commits positions in confidence order with
their most probable tokens: the same drafts as the plain filler (for the confidence rules).
Filling only changes which drafts are verified, never the walk, so decoding stays lossless.

`spiffy_triton.decoding.generate(..., filler="noise")` uses it: before each fill the decoder calls
`NoiseAwareFiller.begin` with its rule, global step, block step and the block's positions, and
computes ``P_last`` with ``top_k = NoiseAwareFiller.top_k`` candidate tokens per position.
"""

from __future__ import annotations

import math

import torch

from ..contract import (
    GUMBEL_STREAM,
    MAX_TOP_K,
    gumbel_from_uint32,
    inverse_temperature,
    philox_words_at,
)
from ..graph import DraftGraph
from ..types import MarginalsOutput
from .drafting import DraftCandidate, _fill_formula, rank_masked_positions
from .rules import TEMPERED_CONFIDENCE, TransitionRule


def gumbel_at(
    seed: int, step: int, positions: torch.Tensor, vocab_ids: torch.Tensor
) -> torch.Tensor:
    """The decoder's Gumbel noise float32 ``[N, K]`` at ``(seed, step, positions[n],
    vocab_ids[n, k])``: the entries of `spiffy_triton.contract.gumbel_noise` for just those
    vocabulary ids (same Philox counters and lanes)."""
    if vocab_ids.dim() != 2 or positions.dim() != 1 or vocab_ids.shape[0] != positions.shape[0]:
        raise ValueError(
            f"vocab_ids must be [N, K] and positions [N], got {tuple(vocab_ids.shape)} and "
            f"{tuple(positions.shape)}"
        )
    if (vocab_ids < 0).any():
        raise ValueError("vocab_ids must be >= 0")
    return gumbel_from_uint32(philox_words_at(seed, step, positions, vocab_ids, GUMBEL_STREAM))


class NoiseAwareFiller:
    """A `spiffy_triton.decoding.drafting.Filler` that fills formulas along the decoder's predicted
    sampling trajectory (module docstring). `top_k`: candidate tokens per position taken from
    ``P_last`` (the noise may pick any of them)."""

    def __init__(self, *, top_k: int = MAX_TOP_K, backend: str = "auto"):
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be an int in 1..{MAX_TOP_K}, got {top_k!r}")
        self.top_k = top_k
        self.backend = backend
        self._context = None

    def begin(
        self, *, rule: TransitionRule, step: int, block_step: int, positions: torch.Tensor
    ) -> None:
        """Where the decoder stands: the root's next transition is `step` (block step
        `block_step`) over the block's absolute `positions`."""
        if not isinstance(rule, TransitionRule):
            raise ValueError(f"rule must be a TransitionRule, got {type(rule).__name__}")
        self._context = (rule, step, block_step, positions)

    def __call__(
        self, graph: DraftGraph, root_state: torch.Tensor, p_last: MarginalsOutput, mask_id: int
    ) -> list[DraftCandidate]:
        if self._context is None:
            raise RuntimeError(
                "NoiseAwareFiller needs the decoder's step: call begin(rule=, step=, "
                "block_step=, positions=) before filling (generate(filler='noise') does)"
            )
        rule, step, block_step, positions = self._context
        if rule.mask_id != mask_id:
            raise ValueError(f"mask_id {mask_id} differs from the rule's {rule.mask_id}")
        if positions.shape[0] != root_state.shape[0]:
            raise ValueError(
                f"begin() got {positions.shape[0]} positions, the root block has "
                f"{root_state.shape[0]}"
            )
        top_k = p_last.topk_tokens.shape[1]
        if graph.max_token_rank > top_k:
            raise ValueError(
                f"P_last has top_k={top_k} but the graph uses token rank {graph.max_token_rank}"
            )
        order, tokens, probs = self._trajectory(
            graph.max_position_rank, root_state, p_last, rule, step, block_step, positions
        )
        candidates = []
        for node, formula in enumerate(graph.nodes):
            candidate = _fill_formula(node, formula, order, tokens, probs, mask_id)
            if candidate is not None and min(candidate.tokens) >= 0:
                candidates.append(candidate)
        return candidates

    def _trajectory(self, depth, root_state, p_last, rule, step, block_step, positions):
        """Block offsets in predicted commit order (at least `depth` of them when the block
        has that many masked), and per offset its tokens and probabilities in rank order."""
        mask_id = rule.mask_id
        device = root_state.device
        cand_tokens = p_last.topk_tokens.to(device)
        cand_probs = p_last.topk_probs.to(device=device, dtype=torch.float64)
        valid = (cand_tokens >= 0) & (cand_tokens != mask_id) & (cand_probs > 0)
        log_p = torch.where(valid, cand_probs.log(), torch.full_like(cand_probs, -math.inf))
        temperature = float(rule.temperature)
        tempered = rule.remasking in TEMPERED_CONFIDENCE and temperature > 0
        if tempered:  # the rule's confidence is softmax(logits / T), over the K candidates here
            scaled = torch.softmax(log_p / temperature, dim=-1)
            confidence_probs = torch.where(valid, scaled, torch.zeros_like(scaled))
        else:
            confidence_probs = cand_probs
        state = root_state.clone()
        order: list[int] = []
        tokens: dict[int, list[int]] = {}
        probs: dict[int, list[float]] = {}
        d = 0
        while len(order) < depth and bool((state == mask_id).any()):
            if rule.schedule is not None and block_step + d >= len(rule.schedule):
                break
            if temperature > 0:
                noise = gumbel_at(rule.seed, step + d, positions, cand_tokens.clamp_min(0))
                scores = log_p * inverse_temperature(temperature) + noise.to(torch.float64)
                scores = torch.where(valid, scores, torch.full_like(scores, -math.inf))
            else:
                scores = log_p
            rank = torch.sort(scores, dim=-1, descending=True, stable=True).indices
            best = rank[:, :1]
            marginals = MarginalsOutput(
                token=cand_tokens.gather(1, best)[:, 0],
                prob=confidence_probs.gather(1, best)[:, 0],
                topk_tokens=p_last.topk_tokens.to(device),
                topk_probs=p_last.topk_probs.to(device),
                lse=p_last.lse.to(device),
                entropy=p_last.entropy.to(device),
            )
            new_state = rule.apply(
                marginals, state, step=step + d, block_step=block_step + d, positions=positions
            )
            committed = (new_state != state).nonzero().flatten().tolist()
            confidence = marginals.prob.tolist()
            committed.sort(key=lambda p: (-confidence[p], p))
            ranked_tokens = cand_tokens.gather(1, rank).tolist()
            ranked_probs = cand_probs.gather(1, rank).tolist()
            for p in committed:
                order.append(p)
                tokens[p] = ranked_tokens[p]
                probs[p] = ranked_probs[p]
            state = new_state
            d += 1
        if len(order) < depth:
            # Positions the prediction does not reach: by P_last confidence and probability.
            rest = [
                p
                for p in rank_masked_positions(p_last, root_state, mask_id, self.backend)
                if p not in tokens
            ]
            plain_tokens = p_last.topk_tokens.tolist()
            plain_probs = p_last.topk_probs.to(torch.float64).tolist()
            for p in rest[: depth - len(order)]:
                order.append(p)
                tokens[p] = plain_tokens[p]
                probs[p] = plain_probs[p]
        return order, [tokens[p] for p in order], [probs[p] for p in order]
