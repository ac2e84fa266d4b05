"""SimSD as decode methods of a block-causal model: ``generate(..., method="simsd", draft=...)``.

`SimSDMethod` and `SimSDExactMethod` fill in the stages of `generate`'s loop
(`spiffy_triton.decoding.methods`): make drafts = the draft source's references, verify = one
forward of the target, walk = the acceptance rule.

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
rule walks them (`walk_states`, as Spiffy's drafts): vanilla's output in fewer forwards, at
``(1 + D) L`` query rows per forward instead of ``L + m - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...layout import SegmentLayout
from ...models.sdar import BlockCausalVerifier, SDARModel, _chunk_lengths
from ..drafting import Drafts
from ..methods import Block, DecodeMethod, Forward, Walk, empty_drafts, walk_states
from ..stats import DecodeStats
from .accept import accept_references, reference_chain
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
    forwards; ``draft_forwards``: forwards of the draft model. ``nfe`` counts every forward
    of the target: its verify forwards (``verify_forwards``) plus, when the draft is the
    target itself (``draft="self"``, ``draft_is_target``), its drafting forwards."""

    method: str = "simsd"
    draft: str = ""
    draft_forwards: int = 0
    draft_is_target: bool = False
    verify_forwards: int = 0
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
            draft_is_target=self.draft_is_target,
            verify_forwards=self.verify_forwards,
            query_rows=self.query_rows,
            rows_per_forward=self.query_rows / self.nfe if self.nfe else 0.0,
            references_verified=self.references_verified,
            references_accepted=self.references_accepted,
            tokens_per_forward=self.tokens_per_forward,
        )
        return out


class SimSDMethod(DecodeMethod):
    """Token-level SimSD (module docstring, steps 1-3): the references of the block's masked
    positions, verified in one forward under `SegmentLayout.simsd`, accepted left to right."""

    name = "simsd"

    def __init__(self, settings, model, draft):
        super().__init__(settings)
        check_block_causal(model, self.name)
        self.source = resolve_draft(draft, model, backend=settings.backend)
        self.draft_forwards = 0  # the source's forwards before this run
        self.target = model
        self.committed = 0  # tokens of the current block committed so far
        self.references: torch.Tensor | None = None  # of the next forward (None: prefill)

    def new_stats(self) -> SimSDStats:
        s = self.settings
        return SimSDStats(
            gen_length=s.gen_length,
            cache=s.cache,
            verify="simsd" if self.name == "simsd" else "packed",
            exact=self.name == "simsd-exact",
            method=self.name,
            draft=getattr(self.source, "name", type(self.source).__name__),
        )

    def bind(self, run) -> None:
        self.target = run.model
        self.source.start(run.model, self.settings.prompt_length)
        self.draft_forwards = self.source.forwards
        # SimSD's forwards are its own: the block-causal verifier in its exact packed mode.
        run.verifier = BlockCausalVerifier(run.model, self.settings.cache, "packed")
        run.verifier.clock = run.clock

    def begin_block(self, run, block: Block, hint: torch.Tensor | None) -> None:
        self.committed, self.references = 0, None

    def prefill(self, run, block: Block) -> Forward:
        """SDAR's block-start forward (commits the blocks finished since)."""
        kv = run.verifier.kv
        run.stats.query_rows += block.end - (0 if kv is None else kv.block_start)
        return super().prefill(run, block)

    def propose(self, run, block: Block):
        proposal = self.source.propose(run.x, block.start, block.end)
        run.clock.lap("drafting")
        return proposal

    def make_drafts(self, run, block: Block) -> Drafts:
        tokens = self.propose(run, block).tokens
        self.references = tokens[self.committed : block.length - 1].to(run.x.device)
        return empty_drafts(run.x, block.length)

    def verify(self, run, block: Block, drafts: Drafts, started: float) -> Forward:
        """Logits ``[m, V]`` of the masked positions under `SegmentLayout.simsd`."""
        x, s, e, committed = run.x, block.start, block.end, self.committed
        masked_pos = torch.arange(s + committed, e - 1, device=x.device)
        if self.settings.cache is None:
            p = self.settings.prompt_length
            chunks = _chunk_lengths(0, p, block.length) + _chunk_lengths(p, s, block.length)
            layout = SegmentLayout.simsd(chunks, committed, block.length)
            ids = torch.cat([x[0, :e], self.references])[None]
            pos = torch.cat([torch.arange(e, device=x.device), masked_pos])
            kv, first = None, s + committed
        else:
            layout = SegmentLayout.simsd(s, committed, block.length, cached=True)
            ids = torch.cat([x[0, s:e], self.references])[None]
            pos = torch.cat([block.positions, masked_pos])
            kv, first = run.verifier.kv, committed
        run.stats.query_rows += ids.shape[1]
        out = run.model(ids, pos, layout, kv)
        run.clock.lap("model")
        logits = out[0, first : first + block.length - committed]
        return Forward(drafts, logits, None, None, started)

    def walk(self, run, block: Block, forward: Forward) -> Walk:
        """The references the target agrees with and its token at the first disagreement
        (at a prefill, with no references in view: the target's first token)."""
        c = self.committed
        tokens = target_tokens(run, self.source, forward.root_logits, block.start + c)
        if self.references is None:
            n = 1
        else:
            n = accept_references(tokens, self.references)
            run.stats.references_verified += self.references.shape[0]
            run.stats.references_accepted += n - 1
        walk = Walk(state=run.x[0, block.start : block.end].clone(), logits=forward.root_logits)
        for k, token in enumerate(tokens[:n].tolist()):  # one committed token per step
            walk.state[c + k] = token
            walk.path.append(walk.state.tolist())
        self.committed += n
        run.step += n
        walk.done = self.committed == block.length
        run.clock.lap("walk")
        return walk

    def finish(self, stats) -> None:
        stats.draft_forwards = self.source.forwards - self.draft_forwards
        stats.verify_forwards = stats.nfe
        # Every forward of the target counts (issue #21): with draft="self" the drafting
        # forwards are the target's too.
        stats.draft_is_target = getattr(self.source, "model", None) is self.target
        if stats.draft_is_target:
            stats.nfe += stats.draft_forwards


class SimSDExactMethod(SimSDMethod):
    """SimSD's exact variant: the references filled into candidate states (`reference_chain`),
    verified as Spiffy verifies drafts and walked with vanilla's rule: vanilla's output."""

    name = "simsd-exact"

    def make_drafts(self, run, block: Block) -> Drafts:
        proposal = self.propose(run, block)
        state = run.x[0, block.start : block.end].clone()
        mask_id = self.settings.rule.mask_id
        candidates = reference_chain(state, proposal, self.settings.rule, mask_id, block.block_step)
        return Drafts(candidates, ())

    def verify(self, run, block: Block, drafts: Drafts, started: float) -> Forward:
        context = block.end if self.settings.cache is None else block.length
        run.stats.query_rows += context + drafts.states.numel()
        return DecodeMethod.verify(self, run, block, drafts, started)

    def walk(self, run, block: Block, forward: Forward) -> Walk:
        if hasattr(self.source, "observe"):  # the root's tokens: the next references
            target_tokens(run, self.source, forward.root_logits, block.start)
        return walk_states(run, block, forward, top_k=1)


def target_tokens(run, source, logits: torch.Tensor, first_position: int) -> torch.Tensor:
    """The target's token per row: argmax, or the Gumbel-max sample keyed by
    ``(seed, position)`` (step 0: each position is committed once). A draft source with
    ``observe`` sees them (`PreviousForwardDraft`)."""
    positions = torch.arange(first_position, first_position + logits.shape[0], device=logits.device)
    marginals = run.settings.rule.marginals(logits, step=0, positions=positions)
    token = marginals.token.to(torch.int64)
    if hasattr(source, "observe"):
        source.observe(positions, token, marginals.prob)
    run.clock.lap("marginals")
    return token
