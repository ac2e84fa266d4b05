"""Decode methods: how drafts are made, how they are verified, how a forward's logits are walked.

`generate` (`spiffy_triton.decoding.loop`) runs the same stages for every method:

    prefill -> for each block: (make drafts -> verify -> walk -> after walk)* -> finish

A `DecodeMethod` fills in the three method-specific stages; the loop owns the sequence, the
statistics and the commit of each walk. `DecodeMethod` itself is vanilla decoding (no drafts:
every forward advances one step). `SpiffyMethod` fills a draft graph's formulas into the root
under ``P_last``, verifies them in the root's forward and walks through every draft the true
state reaches. Both walk with the one transition rule (`walk_states`), which is what keeps
Spiffy lossless. SimSD and its exact variant are methods too (`decoding.simsd.methods`);
docs/ARCHITECTURE.md ("Adding a method") says how another method plugs in.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import torch

from ..graph import DraftGraph
from ..types import MarginalsOutput
from .budget import AutoDraftBudget
from .cost_model import PROBE_DRAFT_COUNTS, probe_verify_cost, verify_shape
from .drafting import Drafts, fill_drafts
from .noise_fill import NoiseAwareFiller
from .rules import block_marginals
from .settings import DecodeSettings
from .stats import DecodeStats


@dataclass
class Block:
    """The block being decoded: positions ``[start, end)`` of the sequence, and the steps made
    inside it so far (the schedule's index)."""

    start: int
    end: int
    positions: torch.Tensor  # [L] absolute positions
    block_step: int = 0

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass
class Forward:
    """One forward's logits: the root block ``[L, V]``, each verified draft ``[D, L, V]``
    (None without drafts), and the next block's rows when the forward computed them."""

    drafts: Drafts
    root_logits: torch.Tensor
    draft_logits: torch.Tensor | None
    hint: torch.Tensor | None
    started: float  # perf_counter at the start of the iteration (drafting included)


@dataclass
class Walk:
    """What one forward advanced: the block's new state, the true states walked to (in
    order), the last marginals and the logits they came from, and whether the block is full."""

    state: torch.Tensor
    path: list[list[int]] = field(default_factory=list)
    marginals: MarginalsOutput | None = None
    logits: torch.Tensor | None = None
    done: bool = False

    @property
    def advanced(self) -> int:
        return len(self.path)


def empty_drafts(like: torch.Tensor, length: int) -> Drafts:
    return Drafts(like.new_empty((0, length)), ())


def walk_states(run, block: Block, forward: Forward, top_k: int) -> Walk:
    """Spiffy's walk (docs/DESIGN.md §2): ``R`` on the root's logits, then on the logits of
    each verified draft the true state reaches; stops at the first state not verified or when
    the block is full. Without drafts this is one vanilla step."""
    rule, clock, stats = run.settings.rule, run.clock, run.stats
    drafts = forward.drafts
    lookup = {tuple(row): k for k, row in enumerate(drafts.states.tolist())}
    walk = Walk(state=run.x[0, block.start : block.end], logits=forward.root_logits)
    while True:
        walk.marginals = rule.marginals(
            walk.logits, step=run.step, positions=block.positions, top_k=top_k
        )
        clock.lap("marginals")
        walk.state = rule.apply(
            walk.marginals,
            walk.state,
            step=run.step,
            block_step=block.block_step,
            positions=block.positions,
        )
        run.step += 1
        block.block_step += 1
        state = walk.state.tolist()
        walk.path.append(state)
        walk.done = rule.mask_id not in state
        match = None if walk.done else lookup.get(tuple(state))
        clock.lap("walk")
        if match is None:
            return walk
        if drafts.nodes:  # drafts of a graph: count the node walked through
            stats.node_accepted[drafts.nodes[match]] += 1
        walk.logits = forward.draft_logits[match]


class DecodeMethod:
    """Vanilla decoding, and the interface every method implements (module docstring).

    Stages, called by the loop in this order: `bind` once per call; per block `begin_block`
    (and `prefill` in a cached mode); per forward `make_drafts`, `verify`, `walk`,
    `after_walk`; `finish` at the end. `new_stats` makes the run's statistics.
    """

    name = "vanilla"

    def __init__(self, settings: DecodeSettings):
        self.settings = settings

    @property
    def num_nodes(self) -> int:
        """Draft kinds the statistics count per kind (`DecodeStats.node_verified`)."""
        return 0

    @property
    def label(self) -> str | None:
        """`DecodeStats.graph`: what drafts the run verified (None: none)."""
        return None

    def new_stats(self) -> DecodeStats:
        """The statistics the run fills in (a method may add its own fields)."""
        s = self.settings
        return DecodeStats(
            gen_length=s.gen_length, cache=s.cache, verify=s.verify, exact=s.exact, graph=self.label
        )

    def bind(self, run) -> None:
        """Before the first forward (e.g. measure what drafts cost)."""

    def begin_block(self, run, block: Block, hint: torch.Tensor | None) -> None:
        """At a block start; `hint` is the last forward's logits of this block's rows, if any."""

    def prefill(self, run, block: Block) -> Forward:
        """Block start of a cached mode: one full forward that fills the cache; its root
        logits make the block's first step, without drafts."""
        started = time.perf_counter()
        root_logits, _ = run.verifier.prefill(run.x, block.start, block.end)
        return Forward(empty_drafts(run.x, block.length), root_logits, None, None, started)

    def make_drafts(self, run, block: Block) -> Drafts:
        """The draft states ``[D, L]`` to verify beside the root in the next forward."""
        return empty_drafts(run.x, block.length)

    def verify(self, run, block: Block, drafts: Drafts, started: float) -> Forward:
        """The forward that evaluates the root and `drafts` (the run's verifier)."""
        root, draft_logits, hint = run.verifier(run.x, block.start, block.end, drafts.states)
        return Forward(drafts, root, draft_logits, hint, started)

    def walk(self, run, block: Block, forward: Forward) -> Walk:
        """Apply the rule to the forward's logits for as many steps as they allow."""
        return walk_states(run, block, forward, top_k=1)

    def after_walk(self, run, block: Block, forward: Forward, walk: Walk) -> None:
        """After each walk, before it is committed (e.g. learn from it, prepare the next)."""

    def finish(self, stats) -> None:
        """After the last block (e.g. add the method's own statistics)."""


class SpiffyMethod(DecodeMethod):
    """Spiffy: draft graph formulas filled under ``P_last``, verified in the root's forward,
    at most `max_drafts` per forward (dynamic pruning) or as many as the cost-aware budget
    (`AutoDraftBudget`) finds worth their cost."""

    name = "spiffy"

    def __init__(self, settings: DecodeSettings):
        super().__init__(settings)
        self.graph: DraftGraph = settings.graph
        self.auto: AutoDraftBudget | None = settings.auto
        self.filler = settings.filler
        top_k = self.graph.max_token_rank
        if isinstance(self.filler, NoiseAwareFiller):
            top_k = max(top_k, self.filler.top_k)
        self.top_k = top_k
        # P_last can be read off the walk's own marginals (computed with top_k tokens) unless
        # the rule scores tempered logits; then the walk keeps top_k = 1 and P_last is apart.
        self.reuse_p_last = settings.rule.p_last_from_supported
        self.walk_top_k = top_k if self.reuse_p_last else 1
        self.p_last: MarginalsOutput | None = None
        self.shape_of = None  # verify shape with k drafts of the current block
        self.batch_wait_ms = 0.0  # the last verify's wait for other rows (decoding.batch)

    @property
    def num_nodes(self) -> int:
        return len(self.graph)

    @property
    def label(self) -> str:
        return self.graph.name or f"{len(self.graph)} nodes"

    def shape_at(self, start: int):
        """The verify shape with ``k`` drafts of the block starting at `start`."""
        s = self.settings
        return functools.partial(
            verify_shape, s.cache, s.verify, start, s.block_length, s.total_length
        )

    def last_marginals(self, logits: torch.Tensor, positions: torch.Tensor) -> MarginalsOutput:
        """``P_last``: probabilities and top tokens at T = 1, no noise (ranks are about
        probability)."""
        s = self.settings
        return block_marginals(
            logits,
            top_k=self.top_k,
            temperature=0.0,
            seed=s.seed,
            step=0,
            positions=positions,
            mask_id=s.rule.mask_id,
            backend=s.backend,
        )

    def bind(self, run) -> None:
        if self.auto is None:
            return
        s = self.settings
        contexts = probe_contexts(
            s.prompt_length, s.total_length, s.block_length, run.model.config.max_sequence_length
        )
        self.auto.bind(
            self.graph,
            lambda: probe_verify_cost(
                run.probe_verifier,
                mask_id=s.rule.mask_id,
                device=run.device,
                cache=s.cache,
                verify=s.verify,
                block_length=s.block_length,
                contexts=contexts,
            )[0],
            s.cost_key,
            [self.shape_at(s.prompt_length)(k) for k in PROBE_DRAFT_COUNTS],
        )
        run.clock.lap("drafting")

    def begin_block(self, run, block: Block, hint: torch.Tensor | None) -> None:
        self.shape_of = self.shape_at(block.start)
        self.p_last = None
        if hint is not None and hint.shape[0] == block.length:
            self.p_last = self.last_marginals(hint, block.positions)
            run.clock.lap("marginals")

    def make_drafts(self, run, block: Block) -> Drafts:
        if self.p_last is None:
            return empty_drafts(run.x, block.length)
        s = self.settings
        if isinstance(self.filler, NoiseAwareFiller):
            self.filler.begin(
                rule=s.rule, step=run.step, block_step=block.block_step, positions=block.positions
            )
        root = run.x[0, block.start : block.end]
        if self.auto is not None:
            filler = self.auto.filler(self.filler, self.shape_of, backend=s.backend)
            drafts = fill_drafts(
                self.graph, root, self.p_last, s.rule.mask_id, filler=filler, backend=s.backend
            )
        else:
            drafts = fill_drafts(
                self.graph,
                root,
                self.p_last,
                s.rule.mask_id,
                max_drafts=s.max_drafts,
                filler=self.filler,
                backend=s.backend,
            )
        run.clock.lap("drafting")
        return drafts

    def verify(self, run, block: Block, drafts: Drafts, started: float) -> Forward:
        model_s = run.stats.time_s["model"]
        wait_s = run.stats.time_s.get("batch_wait", 0.0)
        forward = super().verify(run, block, drafts, started)
        self.batch_wait_ms = (run.stats.time_s.get("batch_wait", 0.0) - wait_s) * 1e3
        if self.auto is not None:  # the budget refits its cost model on real forwards
            ms = (run.stats.time_s["model"] - model_s) * 1e3
            self.auto.record_forward(self.shape_of(len(drafts)), ms, drafts=len(drafts))
        return forward

    def walk(self, run, block: Block, forward: Forward) -> Walk:
        return walk_states(run, block, forward, top_k=self.walk_top_k)

    def after_walk(self, run, block: Block, forward: Forward, walk: Walk) -> None:
        if self.auto is not None:
            self.auto.observe(walk.path)
            # a batched row's wait for the other rows is not this iteration's cost
            elapsed_ms = (time.perf_counter() - forward.started) * 1e3 - self.batch_wait_ms
            self.auto.end_iteration(walk.advanced, elapsed_ms)
        if walk.done:
            return
        # The auto budget backs off after choosing no drafts: plain steps, no P_last.
        self.p_last = None
        if self.auto is None or self.auto.wants_drafts():
            # The walk's last marginals are of these logits: P_last when they carry it.
            if self.reuse_p_last:
                self.p_last = self.settings.rule.p_last_from(walk.marginals)
            else:
                self.p_last = self.last_marginals(walk.logits, block.positions)
        run.clock.lap("marginals")

    def finish(self, stats) -> None:
        if self.auto is not None:
            stats.draft_budget = self.auto.summary(run_forwards=stats.nfe)


def probe_contexts(prompt_len: int, total_len: int, block_length: int, max_len: int):
    """(block start, total length) pairs the cost probe times: this run's first block, and
    the same generation behind a prompt as long as this whole run, or half as long, so the
    fit sees two context lengths."""
    longer = min(max_len, 2 * total_len)
    if longer - total_len >= block_length:
        return [(prompt_len, total_len), (prompt_len + longer - total_len, longer)]
    shorter = prompt_len // 2
    return [(prompt_len, total_len), (shorter, total_len - prompt_len + shorter)]
