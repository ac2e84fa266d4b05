"""SimSD's acceptance on logits, and the candidate states of its exact variant.

Token-level acceptance (the paper's rule): the masked positions ``c, c+1, ..`` of the block are
read left to right; position ``p``'s target token (argmax, or at ``T > 0`` the Gumbel-max
sample keyed by ``(seed, position)``) was computed with the references of ``c .. p-1`` in view.
The references are accepted while the target's token equals them; the target's own token at the
first disagreement is committed too (or at the last position when every reference agreed), so
a forward commits between 1 and ``L - c`` tokens.

Exact variant: the reference tokens only *guess* vanilla's future states. `reference_chain`
fills them into the current state in the order the draft is most confident of, as many per
state as vanilla's schedule commits per step; each candidate is verified as its own copy of the
block (exact for a block-causal model) and vanilla's rule walks them (`walk_states`), reaching
a candidate only when it is the state vanilla's rule commits. The output is vanilla's, token for
token.
"""

from __future__ import annotations

import torch

from ..rules import TransitionRule
from .draft import Proposal


def accept_references(target_tokens: torch.Tensor, references: torch.Tensor) -> int:
    """How many tokens one SimSD forward commits: the references (``[m - 1]``, for the masked
    positions but the last) equal to the target's tokens (``[m]``) up to the first
    disagreement, plus the target's token there."""
    m = target_tokens.shape[0]
    if references.shape[0] != m - 1:
        raise ValueError(f"need {m - 1} references for {m} target tokens, got {references.shape}")
    agree = (target_tokens[:-1] == references).cpu().tolist()
    accepted = next((k for k, same in enumerate(agree) if not same), m - 1)
    return accepted + 1


def reference_chain(
    state: torch.Tensor,
    proposal: Proposal,
    rule: TransitionRule,
    mask_id: int,
    block_step: int,
    max_states: int | None = None,
) -> torch.Tensor:
    """Candidate future states ``[D, L]`` of the exact variant: the masked positions of
    `state`, most confident first under the draft, filled cumulatively with the reference
    tokens, ``schedule[block_step + k]`` more per state (one per state for the threshold
    rules). States with no masked position left are not candidates (the walk ends there)."""
    masked = (state == mask_id).cpu()
    confidence = proposal.confidence.clone()
    confidence[~masked] = -torch.inf
    order = sorted(range(state.shape[0]), key=lambda p: (-float(confidence[p]), p))
    order = order[: int(masked.sum())]
    states, filled, k = [], 0, 0
    while True:
        index = block_step + k
        if rule.schedule is not None and index < len(rule.schedule):
            filled += rule.schedule[index]
        else:
            filled += 1
        k += 1
        if filled >= len(order) or (max_states is not None and len(states) >= max_states):
            break
        candidate = state.clone()
        chosen = torch.tensor(order[:filled], device=state.device)
        candidate[chosen] = proposal.tokens.to(state.device)[chosen]
        states.append(candidate)
    if not states:
        return state.new_empty((0, state.shape[0]))
    return torch.stack(states)
