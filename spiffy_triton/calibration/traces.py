"""Calibration traces: vanilla decoding recorded as formulas per step (docs/DESIGN.md §2, §6).

Trace collection. Vanilla decoding runs through `spiffy_triton.decoding.generate` itself
(``graph=None``) with the model wrapped in a recorder, so the trace *is* vanilla's trajectory,
made by the one transition rule ``R`` (`spiffy_triton.decoding.rules`), under every decode setting
(schedule, threshold, cache, temperature). For every step of every block, with root ``X_s``,
the recorder keeps the true future states ``X_{s+1}, X_{s+2}, ...`` of the block as formulas
relative to ``X_s``: each position newly unmasked since ``X_s`` becomes the pair
``(rank of the position among X_s's masked positions, rank of its token)``. The chain stops at
the first state that is not expressible (a token outside the top ``max_token_rank``) and before
the block is full (a full block is never looked up in the walk).

Ranks are the ones the decoder has at run time. A Spiffy iteration stops after the walk
applied ``R`` to ``f(X_{s-1})`` and reached the unverified state ``X_s``; ``P_last`` is the
marginals of ``f(X_{s-1})``, so ranks are one step stale, and that is what calibration uses:
root ``X_s`` is ranked by vanilla's forward of ``X_{s-1}`` (the same logits; top-k
probabilities at T = 1, exactly as `generate` computes ``P_last``). At a block start without
cache the decoder ranks by the next block's rows of the previous block's last *root* forward,
which depends on where the walk stopped: the trace keeps the block's first step under the rows
of every forward of the previous block (`TraceBlock.start_variants`); counts use the last one.
With a cache a block starts with a prefill without drafts: no ranks, nothing recorded.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..contract import MAX_TOP_K
from ..decoding.drafting import rank_masked_positions
from ..decoding.loop import generate
from ..decoding.rules import block_marginals
from ..graph import Formula
from ..types import MarginalsOutput

DEFAULT_MAX_TOKEN_RANK = 4


# ----------------------------------------------------------------------------------- traces


@dataclass(frozen=True)
class TraceStep:
    """One vanilla step taken as a potential Spiffy root.

    ``num_masked``: masked positions of the root. ``ranked``: whether the decoder has ``P_last``
    at this root (drafts are possible). ``chain``: the formulas of the true next states, in order,
    while expressible and the block is not full. ``expressible``: whether the next state is
    expressible (None when the next state is the full block or there are no ranks).
    """

    num_masked: int
    ranked: bool
    chain: tuple[Formula, ...]
    expressible: bool | None


@dataclass(frozen=True)
class TraceBlock:
    """The steps of one decoded block. ``start_variants[r]``: the block's first step ranked as
    the decoder ranks it when the previous block's last Spiffy root was that block's ``X_r``
    (uncached decoding only; ``steps[0]`` is the variant of the last vanilla forward)."""

    steps: tuple[TraceStep, ...]
    start_variants: tuple[TraceStep, ...] = ()


@dataclass
class Traces:
    """Recorded steps, one list per decoded block, and how they were made."""

    blocks: list[TraceBlock]
    max_token_rank: int
    block_length: int
    settings: dict
    num_prompts: int
    time_s: float
    vanilla_nfe: int

    @property
    def steps(self) -> list[TraceStep]:
        return [step for block in self.blocks for step in block.steps]

    def counts(self) -> collections.Counter:
        """How many recorded steps had each formula on their true path."""
        counts = collections.Counter()
        for step in self.steps:
            counts.update(step.chain)
        return counts

    def summary(self) -> dict:
        steps = self.steps
        judged = [s.expressible for s in steps if s.expressible is not None]
        return {
            "prompts": self.num_prompts,
            "blocks": len(self.blocks),
            "trace_steps": len(steps),
            "vanilla_nfe": self.vanilla_nfe,
            "ranked_steps": sum(s.ranked for s in steps),
            "next_state_expressible": sum(judged) / len(judged) if judged else 0.0,
            "distinct_formulas": len(self.counts()),
            "max_token_rank": self.max_token_rank,
            "collect_time_s": self.time_s,
            "decode": dict(self.settings),
        }


@dataclass
class _Forward:
    block_start: int
    state: list[int]
    ranks: MarginalsOutput  # top-k marginals of the block rows
    next_ranks: MarginalsOutput | None  # of the next block's rows, when the forward has them


class _RecordingModel:
    """Wraps a model for `generate`: passes every call through and records, per forward, the
    block's state and the top-k marginals of its logits (the recording hook of calibration)."""

    def __init__(self, model, prompt_length: int, block_length: int, top_k: int, backend: str):
        self._model = model
        self._prompt_length = prompt_length
        self._block_length = block_length
        self._top_k = top_k
        self._backend = backend
        self.forwards: list[_Forward] = []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def _marginals(self, logits: torch.Tensor, start: int) -> MarginalsOutput:
        # Exactly how the decoder computes P_last (T = 1 probabilities, mask id excluded).
        return block_marginals(
            logits,
            top_k=self._top_k,
            temperature=0.0,
            seed=0,
            step=0,
            positions=torch.arange(start, start + logits.shape[0], device=logits.device),
            mask_id=self._model.config.mask_token_id,
            backend=self._backend,
        )

    def _record(self, start: int, state: torch.Tensor, logits: torch.Tensor, next_logits):
        length = self._block_length
        next_ranks = None
        if next_logits is not None and next_logits.shape[0] == length:
            next_ranks = self._marginals(next_logits, start + length)
        self.forwards.append(
            _Forward(start, state.tolist(), self._marginals(logits, start), next_ranks)
        )

    def __call__(self, input_ids, position_ids=None, layout=None, cache=None):
        logits = self._model(input_ids, position_ids=position_ids, layout=layout, cache=cache)
        if input_ids.shape[0] != 1:
            raise RuntimeError("calibration records vanilla decoding, which runs batch 1")
        length = self._block_length
        if cache is None:
            # The full sequence: the block is the first generated block still holding a mask.
            mask_id = self._model.config.mask_token_id
            generated = input_ids[0, self._prompt_length :].view(-1, length)
            block = int((generated == mask_id).any(dim=1).nonzero()[0])
            start = self._prompt_length + block * length
            end = start + length
            next_rows = logits[0, end : end + length]
            self._record(start, input_ids[0, start:end], logits[0, start:end], next_rows)
        else:
            # Cached: query rows start with the block (prefix mode: then the suffix).
            start = cache.block_start
            next_rows = logits[0, length : 2 * length]
            self._record(start, input_ids[0, :length], logits[0, :length], next_rows)
        return logits

    def prefill(self, input_ids, *, block_start, block_end, mode="dual", position_ids=None):
        logits, cache = self._model.prefill(
            input_ids,
            block_start=block_start,
            block_end=block_end,
            mode=mode,
            position_ids=position_ids,
        )
        # The decoder takes no ranks from a prefill for the next block (it starts with one).
        self._record(
            block_start, input_ids[0, block_start:block_end], logits[0, block_start:block_end], None
        )
        return logits, cache


def trace_step(
    states: Sequence[Sequence[int]],
    k: int,
    p_last: MarginalsOutput | None,
    mask_id: int,
    backend: str = "auto",
) -> TraceStep:
    """Root ``X_k`` of a block's vanilla states ``X_0 .. X_n`` (``X_n`` full) as a trace step,
    ranked by `p_last` (None: the decoder has no ranks there, no drafts)."""
    root = states[k]
    num_masked = sum(1 for t in root if t == mask_id)
    if p_last is None:
        return TraceStep(num_masked, False, (), None)
    ordered = rank_masked_positions(p_last, torch.tensor(list(root)), mask_id, backend)
    position_rank = {pos: i + 1 for i, pos in enumerate(ordered)}
    top_tokens = p_last.topk_tokens.tolist()
    chain: list[Formula] = []
    pairs: list[tuple[int, int]] = []
    expressible = None
    for t in range(k + 1, len(states) - 1):  # the full block X_n is never looked up
        before, after = states[t - 1], states[t]
        ok = True
        for pos in range(len(root)):
            if before[pos] == mask_id and after[pos] != mask_id:
                candidates = top_tokens[pos]
                if after[pos] not in candidates:
                    ok = False
                    break
                pairs.append((position_rank[pos], candidates.index(after[pos]) + 1))
        if t == k + 1:
            expressible = ok
        if not ok:
            break
        chain.append(tuple(sorted(pairs)))
    return TraceStep(num_masked, True, tuple(chain), expressible)


def _encode_prompts(model, prompts) -> list[torch.Tensor]:
    if isinstance(prompts, (str, torch.Tensor)) or not isinstance(prompts, Sequence):
        raise ValueError(
            "prompts must be a list of prompts (strings, token id lists or LongTensors [1, P])"
        )
    if len(prompts) == 0:
        raise ValueError("prompts is empty: calibration needs at least one prompt")
    out = []
    for k, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            tokenizer = getattr(model, "tokenizer", None)
            if tokenizer is None:
                raise ValueError(
                    f"prompts[{k}] is a string but the model has no tokenizer; pass token ids"
                )
            ids = torch.tensor([tokenizer.encode(prompt)], dtype=torch.int64)
        elif isinstance(prompt, torch.Tensor):
            ids = prompt if prompt.dim() == 2 else prompt[None]
        elif isinstance(prompt, Sequence):
            ids = torch.tensor([list(prompt)], dtype=torch.int64)
        else:
            raise ValueError(
                f"prompts[{k}] must be a string, a list of token ids or a LongTensor, "
                f"got {type(prompt).__name__}"
            )
        if ids.numel() == 0:
            raise ValueError(f"prompts[{k}] is empty")
        out.append(ids)
    return out


def collect_traces(
    model,
    prompts,
    *,
    gen_length: int,
    block_length: int,
    max_token_rank: int = DEFAULT_MAX_TOKEN_RANK,
    progress: bool = False,
    backend: str = "auto",
    **decode_kwargs,
) -> Traces:
    """Vanilla-decode every prompt and record its trace steps (see the module docstring).

    `decode_kwargs` are `generate`'s decode settings (steps, temperature, remasking, threshold,
    factor, cache, seed); they must be the ones the graph will be used with.
    """

    if isinstance(max_token_rank, bool) or not isinstance(max_token_rank, int):
        raise ValueError(f"max_token_rank must be an int in 1..{MAX_TOP_K}, got {max_token_rank!r}")
    if not 1 <= max_token_rank <= MAX_TOP_K:
        raise ValueError(f"max_token_rank must be in 1..{MAX_TOP_K}, got {max_token_rank}")
    for name in ("graph", "max_drafts", "filler", "verify"):
        if name in decode_kwargs:
            raise ValueError(f"{name} is not a calibration setting (calibration decodes vanilla)")
    if hasattr(model, "spiffy_verifier"):
        # Such a model (Dream, SDAR adapters) runs its own forwards inside generate, out of
        # the recorder's sight; calibrating it needs a recording hook in decode.py.
        raise ValueError(
            f"calibration records forwards through the model's __call__/prefill; "
            f"{type(model).__name__} verifies through its own spiffy_verifier, which calibration "
            "does not support yet"
        )
    encoded = _encode_prompts(model, prompts)
    mask_id = model.config.mask_token_id
    started = time.perf_counter()
    blocks: list[TraceBlock] = []
    cache = decode_kwargs.get("cache")
    nfe = 0
    iterator = encoded
    if progress:
        from tqdm import tqdm

        iterator = tqdm(encoded, desc="calibration traces", unit="prompt")
    for prompt_ids in iterator:
        recorder = _RecordingModel(
            model, prompt_ids.shape[1], block_length, max_token_rank, backend
        )
        out = generate(
            recorder,
            prompt_ids,
            gen_length=gen_length,
            block_length=block_length,
            backend=backend,
            **decode_kwargs,
        )
        nfe += out.nfe
        tokens = out.tokens[0].tolist()
        blocks.extend(
            _trace_blocks(recorder.forwards, tokens, block_length, cache, mask_id, backend)
        )
    settings = {"gen_length": gen_length, "block_length": block_length, **decode_kwargs}
    return Traces(
        blocks=blocks,
        max_token_rank=max_token_rank,
        block_length=block_length,
        settings=settings,
        num_prompts=len(encoded),
        time_s=time.perf_counter() - started,
        vanilla_nfe=nfe,
    )


def _trace_blocks(
    forwards: Sequence[_Forward],
    tokens: Sequence[int],
    block_length: int,
    cache: str | None,
    mask_id: int,
    backend: str,
) -> list[TraceBlock]:
    """One prompt's recorded forwards as trace blocks (`tokens`: the final sequence)."""
    by_block: dict[int, list[_Forward]] = collections.defaultdict(list)
    for forward in forwards:
        by_block[forward.block_start].append(forward)
    blocks = []
    previous: list[_Forward] = []
    for start in sorted(by_block):
        forwards = by_block[start]
        states = [f.state for f in forwards] + [list(tokens[start : start + block_length])]
        # Root X_k is ranked by the forward of X_{k-1}; X_0 by the next-block rows of the
        # previous block's last root forward, which depends on the Spiffy walk: keep one
        # variant per forward of the previous block (uncached only: a cached block starts
        # with a prefill, without drafts).
        variants: tuple[TraceStep, ...] = ()
        if cache is None and previous:
            variants = tuple(
                trace_step(states, 0, f.next_ranks, mask_id, backend) for f in previous
            )
        first = variants[-1] if variants else trace_step(states, 0, None, mask_id)
        steps = [first] + [
            trace_step(states, k, forwards[k - 1].ranks, mask_id, backend)
            for k in range(1, len(forwards))
        ]
        blocks.append(TraceBlock(tuple(steps), variants))
        previous = forwards
    return blocks
