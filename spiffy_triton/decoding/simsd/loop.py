"""SimSD decoding of a block-causal model: ``generate(..., method="simsd", draft=...)``.

Per block (SDAR: bidirectional inside, causal across blocks), until it is full:

1. the draft source proposes a token for every position of the block (`draft.py`);
2. one forward of the target runs the block's current state and ``m - 1`` reference rows (the
   proposals for the masked positions but the last, at those positions' ids) under
   `SegmentLayout.simsd`: masked position ``p`` sees the context, the whole current block and
   the references before ``p``;
3. `accept_references` commits the references the target agrees with, left to right, and the
   target's own token at the first disagreement.

``cache="prefix"`` is SDAR's per-block KV commit: the block-start forward commits the blocks
finished since and its logits give the block's first token (no references in view there).

``method="simsd-exact"`` keeps vanilla's transition rule: the references are filled into
candidate states (`reference_chain`), each verified as its own copy of the block, and vanilla's
rule walks them (`walk`): vanilla's output in fewer forwards, at ``(1 + D) L`` query rows per
forward instead of ``L + m - 1``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ...layout import SegmentLayout
from ...models.sdar import BlockCausalVerifier, SDARModel, _chunk_lengths
from ..rules import TransitionRule
from ..stats import DecodeStats, GenerateOutput
from .accept import accept_references, reference_chain, walk
from .draft import resolve_draft

SIMSD_METHODS = ("simsd", "simsd-exact")


def check_block_causal(model, method: str) -> None:
    """SimSD needs a block-causal model (a bidirectional one has no temporally valid place for
    reference tokens: every context row would see them)."""
    if not isinstance(model, SDARModel):
        raise ValueError(
            f"method={method!r} needs a block-causal (SDAR-family) model; "
            f"{type(model).__name__} attends bidirectionally without block structure. Use "
            "method='spiffy' (graph=...) or vanilla decoding for it"
        )


@dataclass
class SimSDStats(DecodeStats):
    """`DecodeStats` of a SimSD run. ``steps`` counts committed tokens (``simsd``) or
    vanilla's transitions (``simsd-exact``); ``query_rows``: target query rows over all
    forwards; ``draft_forwards``: forwards of the draft model."""

    method: str = "simsd"
    draft: str = ""
    draft_forwards: int = 0
    query_rows: int = 0
    references_verified: int = 0
    references_accepted: int = 0

    @property
    def tokens_per_forward(self) -> float:
        return self.gen_length / self.nfe if self.nfe else 0.0

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.update(
            method=self.method,
            draft=self.draft,
            draft_forwards=self.draft_forwards,
            query_rows=self.query_rows,
            rows_per_forward=self.query_rows / self.nfe if self.nfe else 0.0,
            references_verified=self.references_verified,
            references_accepted=self.references_accepted,
            tokens_per_forward=self.tokens_per_forward,
        )
        return out


class _Run:
    """One decode: the sequence, the target's forwards, the draft and the statistics."""

    def __init__(self, model, prompt, draft_source, rule, stats, cache, gen_length):
        self.model = model
        self.rule = rule
        self.stats = stats
        self.cache = cache
        self.source = draft_source
        self.prompt_length = prompt.shape[1]
        self.mask_id = model.config.mask_token_id
        masks = torch.full((1, gen_length), self.mask_id, dtype=torch.int64, device=model.device)
        self.x = torch.cat([prompt, masks], dim=1)
        self.verifier = BlockCausalVerifier(model, cache, "packed")

    def timed(self, phase: str, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        self.stats.time_s[phase] += time.perf_counter() - start
        return out

    def propose(self, s: int, e: int):
        return self.timed("drafting", self.source.propose, self.x, s, e)

    def prefill(self, s: int, e: int) -> torch.Tensor:
        """SDAR's block-start forward (commits the finished blocks): the block's logits."""
        kv = self.verifier.kv
        self.stats.nfe += 1
        self.stats.query_rows += e - (0 if kv is None else kv.block_start)
        return self.timed("model", self.verifier.prefill, self.x, s, e)[0]

    def simsd_forward(self, s: int, e: int, committed: int, references: torch.Tensor):
        """Logits ``[m, V]`` of the masked positions under `SegmentLayout.simsd`."""
        device, length = self.x.device, e - s
        masked_pos = torch.arange(s + committed, e - 1, device=device)
        if self.cache is None:
            p = self.prompt_length
            chunks = _chunk_lengths(0, p, length) + _chunk_lengths(p, s, length)
            layout = SegmentLayout.simsd(chunks, committed, length)
            ids = torch.cat([self.x[0, :e], references])[None]
            pos = torch.cat([torch.arange(e, device=device), masked_pos])
            kv, first = None, s + committed
        else:
            layout = SegmentLayout.simsd(s, committed, length, cached=True)
            ids = torch.cat([self.x[0, s:e], references])[None]
            pos = torch.cat([torch.arange(s, e, device=device), masked_pos])
            kv, first = self.verifier.kv, committed
        self.stats.nfe += 1
        self.stats.query_rows += ids.shape[1]
        out = self.timed("model", self.model, ids, pos, layout, kv)
        return out[0, first : first + length - committed]

    def commit(self, s: int, committed: int, tokens: torch.Tensor) -> int:
        n = tokens.shape[0]
        self.x[0, s + committed : s + committed + n] = tokens
        self.stats.steps += n
        self.stats.steps_per_forward[n] += 1
        return committed + n

    def target_tokens(self, logits: torch.Tensor, first_position: int) -> torch.Tensor:
        """The target's token per row: argmax, or the Gumbel-max sample keyed by
        ``(seed, position)`` (step 0: each position is committed once). A draft source with
        ``observe`` sees them (`PreviousForwardDraft`)."""
        positions = torch.arange(
            first_position, first_position + logits.shape[0], device=logits.device
        )
        start = time.perf_counter()
        marginals = self.rule.marginals(logits, step=0, positions=positions)
        token = marginals.token.to(torch.int64)
        if hasattr(self.source, "observe"):
            self.source.observe(positions, token, marginals.prob)
        self.stats.time_s["marginals"] += time.perf_counter() - start
        return token


def _simsd_block(run: _Run, s: int, e: int) -> None:
    """Token-level SimSD on one block (module docstring, steps 1-3)."""
    length, committed = e - s, 0
    if run.cache is not None:
        tokens = run.target_tokens(run.prefill(s, e), s)
        committed = run.commit(s, 0, tokens[:1])
    while committed < length:
        proposal = run.propose(s, e)
        references = proposal.tokens[committed : length - 1].to(run.x.device)
        logits = run.simsd_forward(s, e, committed, references)
        tokens = run.target_tokens(logits, s + committed)
        start = time.perf_counter()
        n = accept_references(tokens, references)
        run.stats.references_verified += references.shape[0]
        run.stats.references_accepted += n - 1
        committed = run.commit(s, committed, tokens[:n])
        run.stats.time_s["walk"] += time.perf_counter() - start


def _exact_block(run: _Run, s: int, e: int, step: int) -> int:
    """Vanilla's rule over reference-chain candidates (module docstring); returns the step."""
    positions = torch.arange(s, e, device=run.x.device)
    block_step, first = 0, True
    while True:
        state = run.x[0, s:e].clone()
        if run.cache is not None and first:
            root, candidates, logits = run.prefill(s, e), state.new_empty((0, e - s)), None
        else:
            proposal = run.propose(s, e)
            candidates = reference_chain(state, proposal, run.rule, run.mask_id, block_step)
            run.stats.nfe += 1
            run.stats.query_rows += (e if run.cache is None else e - s) + candidates.numel()
            root, logits, _ = run.timed("model", run.verifier, run.x, s, e, candidates)
        first = False
        if hasattr(run.source, "observe"):  # the root's tokens: the next references
            run.target_tokens(root, s)
        run.stats.drafts_verified += candidates.shape[0]
        start = time.perf_counter()
        new, advanced = walk(
            run.rule, state, root, candidates, logits,
            step=step, block_step=block_step, positions=positions,
        )  # fmt: skip
        run.stats.time_s["walk"] += time.perf_counter() - start
        run.x[0, s:e] = new
        run.stats.steps += advanced
        run.stats.steps_per_forward[advanced] += 1
        step, block_step = step + advanced, block_step + advanced
        if run.mask_id not in new.tolist():
            return step


@torch.no_grad()
def simsd_generate(
    model,
    prompt: torch.Tensor,
    *,
    method: str,
    draft,
    rule: TransitionRule,
    gen_length: int,
    block_length: int,
    cache: str | None,
    backend: str = "auto",
) -> GenerateOutput:
    """`generate`'s SimSD path (validated arguments; see the module docstring)."""
    if method not in SIMSD_METHODS:
        raise ValueError(f"method must be one of {SIMSD_METHODS}, got {method!r}")
    check_block_causal(model, method)
    source = resolve_draft(draft, model, backend=backend)
    source.start(model, prompt.shape[1])
    draft_forwards = source.forwards
    stats = SimSDStats(
        gen_length=gen_length,
        cache=cache,
        verify="simsd" if method == "simsd" else "packed",
        exact=method == "simsd-exact",
        method=method,
        draft=getattr(source, "name", type(source).__name__),
    )
    run = _Run(model, prompt, source, rule, stats, cache, gen_length)
    start, step = time.perf_counter(), 0
    for s in range(prompt.shape[1], run.x.shape[1], block_length):
        if method == "simsd":
            _simsd_block(run, s, s + block_length)
        else:
            step = _exact_block(run, s, s + block_length, step)
    stats.draft_forwards = source.forwards - draft_forwards
    stats.time_s["total"] = time.perf_counter() - start
    return GenerateOutput(tokens=run.x, nfe=stats.nfe, steps=stats.steps, stats=stats)
