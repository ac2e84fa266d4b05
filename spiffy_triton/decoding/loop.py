"""`generate`: vanilla, Spiffy and SimSD decoding of a dLLM (docs/DESIGN.md §2, §7, §8).

The generation is cut into blocks of ``block_length`` positions decoded left to right. Inside
a block, every step applies the transition rule ``R`` (`spiffy_triton.decoding.rules`) to the
logits of the current state. Vanilla decoding (``graph=None``) runs one forward per step. Spiffy
fills the draft graph's formulas into the current state, verifies them in the same forward as
the root, then walks: apply ``R`` to the root's logits; while the new state equals a verified
draft, apply ``R`` to that draft's logits; stop at the first state not verified. Both paths call
the same rule with the same per-step randomness, so Spiffy reproduces vanilla's states exactly
whenever a draft's logits equal the ones vanilla computes for that state.

Caches (Fast-dLLM): ``cache="prefix"`` keeps the keys before the block, ``"dual"`` the keys
before and after it, both computed by one full forward at the start of each block (counted
as a forward; its logits make the block's first step, without drafts) and frozen while the
block is decoded. Verification modes and when they are exact: `spiffy_triton.decoding.verify`.

The loop is a pipeline of stages over a `DecodeRun` (the call's mutable state):

    resolve_settings -> method.bind -> for each block:
        begin_block -> [prefill | make_drafts -> verify] -> (walk -> commit -> make_drafts
        -> verify)* until the block is full -> finish

A method (`spiffy_triton.decoding.methods`: vanilla, Spiffy; `decoding.simsd`: SimSD and its
exact variant) decides how drafts are made, how they are verified and how the logits are
walked; the loop owns the sequence, the statistics and the order of the stages.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Literal

import torch

from ..graph import DraftGraph
from ..types import (
    Backend,
    CacheMode,
    DiffusionModel,
    Method,
    Remasking,
    VerifyForward,
    VerifyMode,
)
from .batch import BatchGenerateOutput
from .budget import AutoDraftBudget
from .drafting import Drafts, Filler
from .methods import Block, DecodeMethod, Forward, SpiffyMethod, Walk
from .settings import DecodeSettings, resolve_method, resolve_settings
from .simsd import SIMSD_METHODS, SimSDExactMethod, SimSDMethod
from .simsd.draft import DraftSource
from .stats import PHASES, DecodeStats, GenerateOutput, PhaseClock
from .verify import Verifier, default_verify, is_exact

__all__ = ["PHASES", "DecodeStats", "GenerateOutput", "default_verify", "generate", "is_exact"]


class DecodeRun:
    """One `generate` call in progress: the sequence ``x`` (prompt, then the generation, masked
    where not decoded yet), the global step, the statistics and clock, the verifier."""

    def __init__(self, model, settings: DecodeSettings, method: DecodeMethod):
        self.model = model
        self.settings = settings
        self.method = method
        self.device = model.device
        self.stats = method.new_stats()
        self.stats.node_verified = [0] * method.num_nodes
        self.stats.node_accepted = [0] * method.num_nodes
        self.start_time = time.perf_counter()
        self.clock = PhaseClock(self.stats.time_s, self.device)
        self.verifier: VerifyForward | None = None
        self.verifier = self.new_verifier(self.clock)
        masked = torch.full(
            (1, settings.gen_length), settings.rule.mask_id, dtype=torch.int64, device=self.device
        )
        self.x = torch.cat([settings.prompt, masked], dim=1)
        self.step = 0

    def new_verifier(self, clock: PhaseClock) -> VerifyForward:
        """A verifier timed by `clock`: the model's own where it has one (`resolve_verify`;
        the run's is the one made while resolving), else the LLaDA-style `Verifier`."""
        s = self.settings
        if s.model_verifier is None:
            return Verifier(self.model, s.cache, s.verify, clock)
        own = getattr(self, "verifier", None) is None
        verifier = s.model_verifier if own else self.model.spiffy_verifier(s.cache, s.verify)
        verifier.clock = clock
        return verifier

    def probe_verifier(self):
        """A fresh verifier off this run's clock (the cost probe's)."""
        return self.new_verifier(PhaseClock(dict.fromkeys(PHASES, 0.0), self.device))

    def block_at(self, start: int) -> Block:
        end = start + self.settings.block_length
        return Block(start, end, torch.arange(start, end, device=self.device))


def fill_and_verify(run: DecodeRun, block: Block) -> Forward:
    """The method's drafts for the current root, evaluated with the root in one forward."""
    started = time.perf_counter()
    drafts = run.method.make_drafts(run, block)
    return run.method.verify(run, block, drafts, started)


def count_forward(run: DecodeRun, drafts: Drafts) -> None:
    run.stats.nfe += 1
    run.stats.drafts_verified += len(drafts)
    for node in drafts.nodes:
        run.stats.node_verified[node] += 1


def commit(run: DecodeRun, block: Block, walk: Walk) -> None:
    run.x[0, block.start : block.end] = walk.state
    run.stats.steps_per_forward[walk.advanced] += 1


def make_method(settings: DecodeSettings, model, method: str, draft) -> DecodeMethod:
    """The call's method: SimSD (token-level or exact) by name, else vanilla without a graph
    and Spiffy with one."""
    if method in SIMSD_METHODS:
        cls = SimSDMethod if method == "simsd" else SimSDExactMethod
        return cls(settings, model, draft)
    return DecodeMethod(settings) if settings.graph is None else SpiffyMethod(settings)


def decode_block(run: DecodeRun, block: Block, hint: torch.Tensor | None) -> torch.Tensor | None:
    """Decode one block to the end; returns the last forward's rows of the next block."""
    method = run.method
    method.begin_block(run, block, hint)
    if run.settings.cache is not None:
        forward = method.prefill(run, block)
    else:
        forward = fill_and_verify(run, block)
    while True:
        count_forward(run, forward.drafts)
        walk = method.walk(run, block, forward)
        method.after_walk(run, block, forward, walk)
        commit(run, block, walk)
        if walk.done:
            return forward.hint
        forward = fill_and_verify(run, block)


def finish(run: DecodeRun) -> GenerateOutput:
    run.stats.steps = run.step
    run.method.finish(run.stats)
    run.stats.time_s["total"] = time.perf_counter() - run.start_time
    return GenerateOutput(tokens=run.x, nfe=run.stats.nfe, steps=run.step, stats=run.stats)


@torch.no_grad()
def is_batch(prompt_ids, lengths) -> bool:
    """Whether `generate` got a batch: a list of prompts, `lengths`, or a ``[B > 1, P]``
    tensor."""
    if isinstance(prompt_ids, (list, tuple)) or lengths is not None:
        return True
    return (
        isinstance(prompt_ids, torch.Tensor) and prompt_ids.dim() == 2 and prompt_ids.shape[0] > 1
    )


def generate(
    model: DiffusionModel,
    prompt_ids: torch.Tensor,
    *,
    gen_length: int,
    block_length: int | None = None,
    steps: int | None = None,
    temperature: float = 0.0,
    remasking: Remasking = "low_confidence",
    threshold: float | None = None,
    factor: float | None = None,
    cache: CacheMode | None = None,
    graph: DraftGraph | str | os.PathLike | int | None = None,
    max_drafts: int | Literal["auto"] | AutoDraftBudget | None = "auto",
    verify: VerifyMode | None = None,
    seed: int = 0,
    backend: Backend = "auto",
    filler: Filler | str | None = None,
    method: Method | None = None,
    draft: DraftSource | DiffusionModel | str | None = None,
    lengths: Sequence[int] | torch.Tensor | None = None,
) -> GenerateOutput | BatchGenerateOutput:
    """Decode `gen_length` tokens after `prompt_ids` ``[1, P]``; see the module docstring.

    A batch (a list of 1-D prompts, or a padded ``[B, P]`` tensor with `lengths`) is decoded
    by `spiffy_triton.decoding.batch.generate_batch`: each row exactly as alone, forwards
    shared; it returns a `BatchGenerateOutput` (``.rows``: one `GenerateOutput` per prompt).

    Args:
        block_length: positions per block (`gen_length` must be a multiple). None (default):
            a block-causal model's trained block size (SDAR's config ``block_size``); a
            bidirectional model has none and needs it. A block-causal model decoded in other
            blocks warns (`BlockLengthWarning`): its text may be worse.
        steps: total steps of LLaDA's schedule (split evenly over blocks); default
            ``gen_length`` (one token per step). Not used by the threshold / factor rules.
        temperature: 0 for argmax, > 0 for Gumbel-max sampling keyed by (seed, step, position).
        remasking: ``"low_confidence"`` or ``"random"`` (schedule rules).
        threshold / factor: Fast-dLLM parallel unmasking rules (instead of the schedule).
        cache: None (or ``"none"``, as the command line spells it), ``"prefix"`` or
            ``"dual"``.
        graph: None (vanilla), a `DraftGraph`, a path to a graph JSON file, or an int budget
            (the default graph of that many nodes that fits the block,
            ``DraftGraph.default(budget, block_length=block_length)``).
        max_drafts: ``"auto"`` (default): per forward, the drafts with the most expected steps
            per predicted unit of verify cost, measured on this machine (zero drafts when
            drafts do not pay; `spiffy_triton.decoding.budget`), learning across calls with the
            same model and setting (`shared_budget`; see `shared_budgets`,
            `forget_shared_budgets`); an `AutoDraftBudget` to give its cost model or acceptance
            prior, or to keep a run apart; an int: at most this many drafts per forward
            (dynamic pruning); None (or ``"all"``, as the command line spells it): every filled
            node of the graph.
        verify: ``"packed"`` or ``"batch"``; default the exact mode of `cache`.
        backend: backend of the marginals and ranking calls (the model's attention backend is
            fixed when the model is loaded).
        filler: custom draft filler (`spiffy_triton.decoding.drafting.Filler`), or ``"noise"``: fill
            along the predicted sampling trajectory (`spiffy_triton.decoding.noise_fill`).
        method: ``"spiffy"`` (the default: vanilla when `graph` is None), ``"vanilla"``,
            ``"simsd"`` (SimSD's token-level acceptance of a draft's reference tokens; not
            vanilla's output) or ``"simsd-exact"`` (vanilla's output, the references as
            candidate states); SimSD needs a block-causal model (`decoding.simsd`).
        draft: SimSD's reference tokens: ``"self"`` (the default: the target, one step),
            ``"previous"`` (the target's tokens from its previous forward of the block), a draft
            model of the same vocabulary, or a `spiffy_triton.decoding.simsd.DraftSource`.

    Returns `GenerateOutput(tokens [1, P + gen_length], nfe, steps, stats)`.
    """
    # Every keyword argument but `lengths`, passed on as given (decode's and generate_batch's).
    arguments = {k: v for k, v in locals().items() if k not in ("model", "prompt_ids", "lengths")}
    if is_batch(prompt_ids, lengths):
        from .batch import generate_batch

        return generate_batch(model, prompt_ids, lengths=lengths, **arguments)
    return decode(model, prompt_ids, **arguments)


def decode(model, prompt_ids, *, method, draft, wrap_verifier=None, **options) -> GenerateOutput:
    """One prompt's decode (`generate`'s body; `options`: the rest of its keyword arguments,
    checked by `resolve_settings`); `wrap_verifier` wraps the run's verifier (batched decoding
    shares its forwards, `decoding.batch`)."""
    method = resolve_method(
        method, options["graph"], draft, options["threshold"], options["factor"]
    )
    # The command line's spellings are the API's too (issue #21): cache "none" is None,
    # max_drafts "all" is None (every node), SimSD's draft defaults to "self".
    if options["cache"] == "none":
        options["cache"] = None
    if isinstance(options["max_drafts"], str) and options["max_drafts"] == "all":
        options["max_drafts"] = None
    if method in SIMSD_METHODS and draft is None:
        draft = "self"
    settings = resolve_settings(model, prompt_ids, **options)
    run = DecodeRun(model, settings, make_method(settings, model, method, draft))
    if wrap_verifier is not None:
        run.verifier = wrap_verifier(run.verifier)
    run.method.bind(run)
    hint = None  # next block's logits from the last root forward, if the mode computed them
    for start in settings.block_starts:
        hint = decode_block(run, run.block_at(start), hint)
    return finish(run)
