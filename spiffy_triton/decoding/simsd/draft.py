"""Draft sources of SimSD: the reference tokens of a block given the current state.

A draft source proposes, for the block ``[s, e)`` of the sequence ``x`` (committed tokens kept,
the rest masked), a token for every position (`Proposal`). SimSD verifies them token by token
(`spiffy_triton.decoding.simsd.accept`); the exact variant builds its candidate states from them.

`ModelDraft` runs a dLLM's own vanilla decoding of the block for a few steps, greedily: a
smaller model of the same vocabulary, or the target itself at fewer steps (``draft="self"``:
one step, every masked position from one forward). Its forwards are counted apart from the
target's (``forwards``).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import torch

from ...models.sdar import BlockCausalVerifier
from ..rules import TransitionRule, num_transfer_tokens

# How many token ids `check_draft_model` decodes with both tokenizers to compare them.
TOKENIZER_PROBE_IDS = 512


class Proposal(NamedTuple):
    tokens: torch.Tensor  # LongTensor [L]: a token for every position of the block
    confidence: torch.Tensor  # float64 [L]: the draft's probability of each (inf where given)


@runtime_checkable
class DraftSource(Protocol):
    """Reference tokens for a block: ``start`` once per decode, ``propose`` per forward."""

    forwards: int  # forward passes of the draft model so far (0 for a free source)

    def start(self, target, prompt_length: int) -> None: ...

    def propose(self, x: torch.Tensor, s: int, e: int) -> Proposal: ...


def _vocab(model) -> int:
    return int(model.config.vocab_size)


def _tokenizer_probe(tokenizer, n: int) -> list[str] | None:
    if tokenizer is None:
        return None
    return [tokenizer.decode([i]) for i in range(n)]


def check_draft_model(draft_model, target) -> None:
    """Raise a ValueError naming `draft` unless `draft_model` speaks the target's vocabulary
    (same vocabulary size, mask id and, where both have one, tokenizer)."""
    for name in ("config", "forward"):
        if not hasattr(draft_model, name):
            raise ValueError(
                f"draft must be a model of the target's vocabulary, a DraftSource or 'self', "
                f"got {type(draft_model).__name__}"
            )
    if _vocab(draft_model) != _vocab(target):
        raise ValueError(
            f"draft: the draft model's vocabulary has {_vocab(draft_model)} tokens, the "
            f"target's {_vocab(target)}: reference tokens must be ids of the target's vocabulary"
        )
    if draft_model.config.mask_token_id != target.config.mask_token_id:
        raise ValueError(
            f"draft: the draft model's mask id is {draft_model.config.mask_token_id}, the "
            f"target's {target.config.mask_token_id}: not the same tokenizer"
        )
    n = min(TOKENIZER_PROBE_IDS, _vocab(target))
    mine = _tokenizer_probe(getattr(draft_model, "tokenizer", None), n)
    theirs = _tokenizer_probe(getattr(target, "tokenizer", None), n)
    if mine is not None and theirs is not None and mine != theirs:
        first = next(i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b)
        raise ValueError(
            f"draft: the draft model's tokenizer decodes id {first} as {mine[first]!r}, the "
            f"target's as {theirs[first]!r}: not the same tokenizer"
        )
    if draft_model.device != target.device:
        raise ValueError(f"draft: on {draft_model.device}, the target on {target.device}")


class ModelDraft:
    """Reference tokens from `steps` greedy vanilla steps of `model` on the block.

    LLaDA's schedule over the positions still masked (``num_transfer_tokens``), the most
    confident first; ``steps=1`` fills every masked position from one forward. `model` is
    None for the target itself (bound at `start`). A block-causal draft model keeps its own
    SDAR KV cache (``cache="prefix"``: a block-start forward commits the finished blocks, later
    proposals of the block run the block's rows only) or runs uncached (``cache=None``); a
    bidirectional one runs on the whole sequence.
    """

    def __init__(
        self, model=None, *, steps: int = 1, cache: str | None = "prefix", backend: str = "auto"
    ):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if cache not in (None, "prefix"):
            raise ValueError(f"cache must be None or 'prefix', got {cache!r}")
        self.cache = cache
        self._given = model
        self.model = model
        self.steps = steps
        self.backend = backend
        self.forwards = 0
        self._verifier = None

    @property
    def name(self) -> str:
        who = "self" if self._given is None else type(self._given).__name__
        return f"{who}, {self.steps} step{'s' if self.steps > 1 else ''}"

    def start(self, target, prompt_length: int) -> None:
        if self._given is not None:
            check_draft_model(self._given, target)
        self.model = target if self._given is None else self._given
        hook = getattr(self.model, "spiffy_verifier", None)
        self._verifier = None if hook is None else hook(None, None)
        if isinstance(self._verifier, BlockCausalVerifier) and self.cache is not None:
            self._verifier = hook(self.cache, None)
        self._block = None  # start of the block the draft's cache was prefilled for

    def _logits(self, x: torch.Tensor, s: int, e: int) -> torch.Tensor:
        self.forwards += 1
        if self._verifier is None:  # LLaDA: the whole sequence, future blocks masked
            return self.model(x)[0, s:e]
        if getattr(self._verifier, "cache", None) is not None and self._block != s:
            self._block = s
            return self._verifier.prefill(x, s, e)[0]
        return self._verifier(x, s, e, x.new_empty((0, e - s)))[0]

    @torch.no_grad()
    def propose(self, x: torch.Tensor, s: int, e: int) -> Proposal:
        if self.model is None:
            raise RuntimeError("ModelDraft.propose before start()")
        mask_id = self.model.config.mask_token_id
        y = x.clone()
        block = y[0, s:e]
        confidence = torch.full((e - s,), torch.inf, dtype=torch.float64)
        masked = int((block == mask_id).sum())
        if masked == 0:
            return Proposal(block.clone(), confidence)
        steps = min(self.steps, masked)
        rule = TransitionRule(
            mask_id=mask_id,
            schedule=tuple(num_transfer_tokens(masked, steps)),
            backend=self.backend,
        )
        positions = torch.arange(s, e, device=x.device)
        for k in range(steps):
            new, marginals = rule(
                self._logits(y, s, e), block, step=k, block_step=k, positions=positions
            )
            filled = (new != block).cpu()
            confidence[filled] = marginals.prob.to("cpu", torch.float64)[filled]
            block = new
            y[0, s:e] = block
        return Proposal(block.clone(), confidence)


class PreviousForwardDraft:
    """The target's own tokens from its previous forward of the block: no draft forward.

    The SimSD loop reports every forward's target tokens (`observe`); the block-start forward
    of the SDAR cache gives one token per position (the target at one step, for free), a SimSD
    forward the masked positions' tokens (those after a disagreement saw a wrong reference, so
    they are weaker guesses). Where nothing was observed yet (the first forward of a block
    without cache) the reference is the mask id, which the target never commits: that forward
    commits its first token only.
    """

    name = "previous forward"

    def __init__(self):
        self.forwards = 0
        self._seen: dict[int, tuple[int, float]] = {}

    def start(self, target, prompt_length: int) -> None:
        self._mask_id = target.config.mask_token_id
        self._seen = {}

    def observe(self, positions: torch.Tensor, tokens: torch.Tensor, confidence) -> None:
        """The target's tokens (and their probabilities) at absolute `positions`."""
        values = zip(tokens.tolist(), confidence.to(torch.float64).tolist())
        self._seen.update(zip(positions.tolist(), values))

    def propose(self, x: torch.Tensor, s: int, e: int) -> Proposal:
        block = x[0, s:e].clone()
        seen = [self._seen.get(p, (self._mask_id, 0.0)) for p in range(s, e)]
        masked = block == self._mask_id
        guesses = torch.tensor([t for t, _ in seen], dtype=block.dtype, device=block.device)
        block[masked] = guesses[masked]
        return Proposal(block, torch.tensor([c for _, c in seen], dtype=torch.float64))


def resolve_draft(draft, target, *, backend: str = "auto") -> DraftSource:
    """The draft source of ``generate(..., draft=)``: ``"self"`` (the target, one step),
    ``"previous"`` (`PreviousForwardDraft`), a model (one step of it), or a `DraftSource`.
    Raises a ValueError naming `draft`."""
    if draft is None:
        raise ValueError(
            "draft is required with method='simsd': 'self' (the target at one step), a draft "
            "model of the same vocabulary, or a DraftSource"
        )
    if isinstance(draft, str):
        if draft == "previous":
            return PreviousForwardDraft()
        if draft != "self":
            raise ValueError(
                f"draft must be 'self', 'previous', a model or a DraftSource, got {draft!r}"
            )
        return ModelDraft(None, backend=backend)
    if isinstance(draft, DraftSource):
        return draft
    check_draft_model(draft, target)
    return ModelDraft(draft, backend=backend)
