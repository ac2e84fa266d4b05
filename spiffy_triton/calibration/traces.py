"""Offline calibration of draft graphs from vanilla decoding traces (DESIGN.md sections 2, 6).

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

Selection of ``D`` nodes from the observed formulas, two objectives:

- ``"degree1"`` (the paper's accumulation): the connected node set ``Q`` maximising
  ``sum over q in Q of count(q) + sum of count(p) over q's parents p in Q``, where ``count`` is
  how many recorded steps had the formula on their true path and the parents of ``q`` are the
  formulas observed one step before it on some path (degree 1: direct parents only); grown
  greedily from the root, each node added has a parent in ``Q`` or is a first step.
- ``"steps"`` (the quantity that matters): the expected number of steps one forward advances,
  ``1 + the number of leading states of the true path whose formulas are in Q``, averaged over
  every recorded step taken as a root; grown greedily by the largest gain.

`simulate` replays Spiffy's walk on recorded traces for any graph and gives the NFE it would
take: exactly `generate`'s NFE in the exact verification modes (tested for every cache mode,
multi-token steps and sampling), without pruning.

Per-phase graphs (``phases=n``): the masked count of the root ``1..block_length`` is cut into
``n`` equal ranges and a graph of ``D`` nodes is selected for each from the steps in that range
(`PhasedDraftGraph`).
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..decoding.drafting import DraftCandidate, probability_filler, rank_masked_positions
from ..graph import DraftGraph, Formula
from ..types import MarginalsOutput

OBJECTIVES = ("steps", "degree1")
DEFAULT_MAX_TOKEN_RANK = 4
PHASED_FORMAT = "spiffy-phased-draft-graph"


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
        from ..decoding.rules import block_marginals

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
    from ..decoding.loop import generate
    from ..reference.marginals import MAX_TOP_K

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
        by_block: dict[int, list[_Forward]] = collections.defaultdict(list)
        for forward in recorder.forwards:
            by_block[forward.block_start].append(forward)
        previous: list[_Forward] = []
        for start in sorted(by_block):
            forwards = by_block[start]
            states = [f.state for f in forwards] + [tokens[start : start + block_length]]
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


# -------------------------------------------------------------------------------- selection


def _check_budget(budget) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be an int >= 1 (nodes of the graph), got {budget!r}")
    return budget


def _observed(steps: Sequence[TraceStep]):
    """Formula ids, each step's chain as ids, counts, and the observed parents of each id
    (-1 for the root: a first step)."""
    ids: dict[Formula, int] = {}
    chains = []
    for step in steps:
        chains.append(tuple(ids.setdefault(f, len(ids)) for f in step.chain))
    formulas = list(ids)
    counts = [0] * len(formulas)
    parents: list[set[int]] = [set() for _ in formulas]
    for chain in chains:
        previous = -1
        for node in chain:
            counts[node] += 1
            parents[node].add(previous)
            previous = node
    return formulas, chains, counts, parents


def _order_key(formula: Formula, count: int):
    # Ties: more often observed, fewer pairs, then the smaller formula.
    return (-count, len(formula), formula)


def _select_degree1(formulas, counts, parents, budget) -> list[int]:
    chosen: list[int] = []
    chosen_set: set[int] = set()
    children: list[set[int]] = [set() for _ in formulas]
    for node, ps in enumerate(parents):
        for p in ps:
            if p >= 0:
                children[p].add(node)
    while len(chosen) < budget:
        best, best_key = None, None
        for node in range(len(formulas)):
            if node in chosen_set:
                continue
            if -1 not in parents[node] and not parents[node] & chosen_set:
                continue  # not connected to the chosen set
            gain = counts[node]
            gain += sum(counts[p] for p in parents[node] if p in chosen_set)
            gain += counts[node] * len(children[node] & chosen_set)
            key = (-gain, *_order_key(formulas[node], counts[node]))
            if best_key is None or key < best_key:
                best, best_key = node, key
        if best is None:
            break
        chosen.append(best)
        chosen_set.add(best)
    return chosen


def _select_steps(formulas, chains, counts, budget) -> list[int]:
    chosen: list[int] = []
    chosen_set: set[int] = set()
    while len(chosen) < budget:
        gains = collections.Counter()
        for chain in chains:
            m = 0
            while m < len(chain) and chain[m] in chosen_set:
                m += 1
            if m == len(chain):
                continue
            # Adding chain[m] accepts it and every chosen state right after it.
            run = 1
            while m + run < len(chain) and chain[m + run] in chosen_set:
                run += 1
            gains[chain[m]] += run
        if not gains:
            break
        best = min(gains, key=lambda n: (-gains[n], *_order_key(formulas[n], counts[n])))
        chosen.append(best)
        chosen_set.add(best)
    return chosen


def _pad(chosen: list[int], formulas, counts, budget: int) -> list[Formula]:
    """Fill a selection short of `budget` (nothing more gains on the traces): observed
    formulas by count, then nodes of the default graph."""
    nodes = [formulas[n] for n in chosen]
    if len(nodes) < budget:
        rest = sorted(
            (n for n in range(len(formulas)) if n not in set(chosen)),
            key=lambda n: _order_key(formulas[n], counts[n]),
        )
        nodes += [formulas[n] for n in rest[: budget - len(nodes)]]
    if len(nodes) < budget:
        from ..graph import MAX_DEFAULT_BUDGET

        present = set(nodes)
        for formula in DraftGraph.default(MAX_DEFAULT_BUDGET).nodes:
            if len(nodes) == budget:
                break
            if formula not in present:
                nodes.append(formula)
    return nodes


def _replay(blocks: Sequence[TraceBlock], nodes_at) -> tuple[int, int, int]:
    """Spiffy's walk over `blocks` with the node set ``nodes_at(num_masked)``: (NFE, steps,
    total advance over every recorded step taken as a root)."""
    nfe = steps = advance = 0
    last_root = None
    for block in blocks:
        walk = list(block.steps)
        if block.start_variants and last_root is not None:
            walk[0] = block.start_variants[last_root]
        k = 0
        while k < len(walk):
            last_root = k
            step = walk[k]
            k += 1 + _accepted(step.chain, nodes_at(step.num_masked))
            nfe += 1
        steps += len(walk)
        for step in block.steps:
            advance += 1 + _accepted(step.chain, nodes_at(step.num_masked))
    return nfe, steps, advance


def _refine(start: list[Formula], pool: Sequence[Formula], evaluate, max_rounds: int):
    """Local search: swap one node for one pool formula while `evaluate` (higher is better)
    improves (first improvement, at most `max_rounds` swaps)."""
    current, best = list(start), evaluate(set(start))
    for _ in range(max_rounds):
        chosen = set(current)
        outside = [f for f in pool if f not in chosen]
        swap = None
        for i in range(len(current)):
            for formula in outside:
                trial = current[:i] + [formula] + current[i + 1 :]
                value = evaluate(set(trial))
                if value > best:
                    swap, best = trial, value
                    break
            if swap is not None:
                break
        if swap is None:
            break
        current = swap
    return current


def select_graph(
    traces: Traces | Sequence[TraceStep],
    budget: int,
    *,
    objective: str = "steps",
    name: str | None = None,
) -> DraftGraph:
    """A graph of `budget` nodes chosen on recorded steps by `objective`; see the module
    docstring.

    ``"degree1"``: the paper's greedy accumulation; nodes in the order chosen. ``"steps"``: the
    better of the greedy selection (by expected steps per forward) and the default graph, then
    improved by swapping single nodes while the replayed walk's NFE on the traces goes down
    (ties: the expected steps per forward goes up; with a plain list of steps, the latter
    only); nodes ordered by size then count, so that parents come first.
    """
    budget = _check_budget(budget)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    steps = traces.steps if isinstance(traces, Traces) else list(traces)
    if not steps:
        raise ValueError("no recorded steps to calibrate on")
    formulas, chains, counts, parents = _observed(steps)
    name = name or f"calibrated-{objective}-{budget}"
    if objective == "degree1":
        chosen = _select_degree1(formulas, counts, parents, budget)
        return DraftGraph(_pad(chosen, formulas, counts, budget), name=name)

    greedy = _pad(_select_steps(formulas, chains, counts, budget), formulas, counts, budget)
    if isinstance(traces, Traces):

        def evaluate(nodes):
            nfe, _, advance = _replay(traces.blocks, lambda num_masked: nodes)
            return (-nfe, advance)
    else:

        def evaluate(nodes):
            return (sum(1 + _accepted(step.chain, nodes) for step in steps),)

    from ..graph import MAX_DEFAULT_BUDGET

    default = list(DraftGraph.default(min(budget, MAX_DEFAULT_BUDGET)).nodes)
    default += [f for f in greedy if f not in set(default)][: budget - len(default)]
    start = max((greedy, default), key=lambda nodes: evaluate(set(nodes)))
    count_of = dict(zip(formulas, counts))
    by_count = sorted(formulas, key=lambda f: _order_key(f, count_of[f]))
    pool = by_count[: 3 * budget + 16]
    nodes = _refine(start, pool, evaluate, max_rounds=4 * budget)
    nodes.sort(key=lambda f: (len(f), -count_of.get(f, 0), f))
    return DraftGraph(nodes, name=name)


# ------------------------------------------------------------------------------ evaluation


def _accepted(chain: tuple[Formula, ...], nodes: set[Formula]) -> int:
    m = 0
    while m < len(chain) and chain[m] in nodes:
        m += 1
    return m


def _node_sets(graph: DraftGraph):
    """``num_masked -> set of formulas`` the decoder verifies at a root with that many masked."""
    if isinstance(graph, PhasedDraftGraph):
        cache: dict[int, set[Formula]] = {}

        def at(num_masked: int) -> set[Formula]:
            if num_masked not in cache:
                cache[num_masked] = set(graph.phase_graph(num_masked).nodes)
            return cache[num_masked]

        return at
    nodes = set(graph.nodes)
    return lambda num_masked: nodes


def simulate(traces: Traces, graph: DraftGraph) -> dict:
    """Replay Spiffy's walk on the recorded blocks with `graph` (no pruning).

    Returns the simulated ``nfe``, the ``steps`` made, ``steps_per_nfe``, and
    ``mean_advance``: steps one forward advances averaged over every recorded step as a root.
    The replay is exact: it is the NFE `generate` takes with this graph and the same settings
    whenever drafts' logits equal vanilla's (the exact modes)."""
    nfe, steps, advance = _replay(traces.blocks, _node_sets(graph))
    return {
        "nfe": nfe,
        "steps": steps,
        "steps_per_nfe": steps / nfe if nfe else 0.0,
        "mean_advance": advance / steps if steps else 0.0,
    }


def node_counts(traces: Traces, graph: DraftGraph) -> list[int]:
    """Per node of `graph`: recorded steps with that formula on their true path."""
    counts = traces.counts()
    return [counts.get(f, 0) for f in graph.nodes]


# ------------------------------------------------------------------------------ per phase


class PhasedDraftGraph(DraftGraph):
    """One graph per range of the root's masked count; as a `DraftGraph` it is the union of
    the phase graphs (what `generate` validates and counts statistics by). Pass
    ``filler=graph.filler()`` to `generate` so that each root gets its phase's nodes."""

    def __init__(self, phases: Sequence[tuple[int, int, DraftGraph]], *, name: str | None = None):
        if not phases:
            raise ValueError("PhasedDraftGraph needs at least one phase")
        ranges = sorted((lo, hi) for lo, hi, _ in phases)
        for lo, hi in ranges:
            if not 1 <= lo <= hi:
                raise ValueError(f"phase range [{lo}, {hi}] must satisfy 1 <= lo <= hi")
        for (_, hi), (lo, _) in zip(ranges, ranges[1:]):
            if lo <= hi:
                raise ValueError("phase ranges of masked counts must not overlap")
        union: dict[Formula, None] = {}
        for _, _, graph in phases:
            union.update(dict.fromkeys(graph.nodes))
        super().__init__(list(union), name=name)
        self.phases = tuple(sorted(phases, key=lambda p: p[0]))

    def phase_graph(self, num_masked: int) -> DraftGraph:
        """The graph of the phase holding `num_masked` (the nearest phase outside all)."""
        for lo, hi, graph in self.phases:
            if lo <= num_masked <= hi:
                return graph
        nearest = min(
            self.phases, key=lambda p: min(abs(num_masked - p[0]), abs(num_masked - p[1]))
        )
        return nearest[2]

    def filler(self, *, backend: str = "auto"):
        """A `spiffy_triton.decoding.drafting.Filler` that fills the root's phase graph; node
        indices are those of this (union) graph."""

        def fill(graph, root_state, p_last, mask_id) -> list[DraftCandidate]:
            num_masked = int((root_state == mask_id).sum())
            phase = self.phase_graph(num_masked)
            candidates = probability_filler(phase, root_state, p_last, mask_id, backend=backend)
            return [
                DraftCandidate(self.index(phase.nodes[c.node]), c.positions, c.tokens, c.probs)
                for c in candidates
            ]

        return fill

    def to_dict(self) -> dict:
        return {
            "format": PHASED_FORMAT,
            "version": 1,
            "name": self.name,
            "phases": [
                {"min_masked": lo, "max_masked": hi, "graph": g.to_dict()}
                for lo, hi, g in self.phases
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> PhasedDraftGraph:
        if not isinstance(data, dict) or data.get("format") != PHASED_FORMAT:
            raise ValueError(f"not a phased draft graph: expected format {PHASED_FORMAT!r}")
        phases = data.get("phases")
        if not isinstance(phases, list) or not phases:
            raise ValueError("phased draft graph JSON needs a non-empty 'phases' list")
        parsed = []
        for k, phase in enumerate(phases):
            try:
                lo, hi, graph = phase["min_masked"], phase["max_masked"], phase["graph"]
            except (TypeError, KeyError):
                raise ValueError(
                    f"phase {k} needs 'min_masked', 'max_masked' and 'graph'"
                ) from None
            for what, value in (("min_masked", lo), ("max_masked", hi)):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"phase {k}: {what} must be an int, got {value!r}")
            parsed.append((lo, hi, DraftGraph.from_dict(graph)))
        return cls(parsed, name=data.get("name"))


def select_phased_graph(
    traces: Traces, budget: int, phases: int, *, objective: str = "steps"
) -> PhasedDraftGraph:
    """`phases` graphs of `budget` nodes, one per equal range of the root's masked count.

    ``"steps"``: every phase starts from the single ``"steps"`` graph, then each phase's nodes
    are swapped while the replayed NFE of the whole traces goes down (ties: mean advance up),
    so the phased graph never replays worse than the single one. ``"degree1"``: the paper's
    selection on each phase's steps."""
    budget = _check_budget(budget)
    if isinstance(phases, bool) or not isinstance(phases, int) or phases < 1:
        raise ValueError(f"phases must be an int >= 1, got {phases!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    length = traces.block_length
    if phases > length:
        raise ValueError(f"phases ({phases}) cannot exceed block_length ({length})")
    edges = [round(length * k / phases) for k in range(phases + 1)]
    ranges = list(zip(edges, edges[1:]))
    phase_steps = [[s for s in traces.steps if lo < s.num_masked <= hi] for lo, hi in ranges]
    name = f"calibrated-{objective}-{budget}x{phases}"
    if objective == "degree1":
        selected = []
        for (lo, hi), steps in zip(ranges, phase_steps):
            if not any(s.chain for s in steps):
                steps = traces.steps  # nothing observed in this phase: the global selection
            graph = select_graph(steps, budget, objective=objective, name=f"phase-{lo + 1}-{hi}")
            selected.append((lo + 1, hi, graph))
        return PhasedDraftGraph(selected, name=name)

    phase_of = [0] * (length + 1)
    for p, (lo, hi) in enumerate(ranges):
        for masked in range(lo + 1, hi + 1):
            phase_of[masked] = p
    current = [list(select_graph(traces, budget).nodes) for _ in ranges]
    for p, steps in enumerate(phase_steps):
        counts = collections.Counter(f for s in steps for f in s.chain)
        pool = sorted(counts, key=lambda f: _order_key(f, counts[f]))[: 3 * budget + 16]

        def evaluate(nodes, p=p):
            sets = [set(c) for c in current]
            sets[p] = nodes
            nfe, _, advance = _replay(traces.blocks, lambda masked: sets[phase_of[masked]])
            return (-nfe, advance)

        current[p] = _refine(current[p], pool, evaluate, max_rounds=4 * budget)
    selected = []
    for (lo, hi), nodes in zip(ranges, current):
        counts = collections.Counter(
            f for s in traces.steps if lo < s.num_masked <= hi for f in s.chain
        )
        nodes.sort(key=lambda f: (len(f), -counts.get(f, 0), f))
        selected.append((lo + 1, hi, DraftGraph(nodes, name=f"phase-{lo + 1}-{hi}")))
    return PhasedDraftGraph(selected, name=name)


# ------------------------------------------------------------------------------ public API


def calibrate(
    model,
    prompts,
    *,
    budget: int,
    objective: str = "steps",
    phases: int | None = None,
    gen_length: int = 64,
    block_length: int = 32,
    max_token_rank: int = DEFAULT_MAX_TOKEN_RANK,
    progress: bool = False,
    backend: str = "auto",
    **decode_kwargs,
) -> DraftGraph:
    """Calibrate a draft graph of `budget` nodes on vanilla decoding of `prompts`.

    Args:
        prompts: strings (encoded by ``model.tokenizer``), token id lists or LongTensors.
        objective: ``"steps"`` (expected steps per forward on the traces) or ``"degree1"``
            (the paper's count-and-parents accumulation).
        phases: None for one graph, or ``n`` for a `PhasedDraftGraph` of ``n`` phases.
        max_token_rank: the largest token rank a formula may use.
        decode_kwargs: `generate`'s decode settings (steps, temperature, remasking, threshold,
            factor, cache, seed): use the ones the graph will decode with.
    """
    budget = _check_budget(budget)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    traces = collect_traces(
        model,
        prompts,
        gen_length=gen_length,
        block_length=block_length,
        max_token_rank=max_token_rank,
        progress=progress,
        backend=backend,
        **decode_kwargs,
    )
    if phases is not None:
        return select_phased_graph(traces, budget, phases, objective=objective)
    return select_graph(traces, budget, objective=objective)


def save_graph(graph: DraftGraph, path: str | Path, traces: Traces | None = None) -> Path:
    """Write `graph` as JSON (loadable by `load_graph` / `DraftGraph.load`), with the node
    counts and the trace summary when `traces` are given."""
    data = graph.to_dict()
    if traces is not None:
        if isinstance(graph, PhasedDraftGraph):
            for phase, (_, _, g) in zip(data["phases"], graph.phases):
                phase["graph"]["counts"] = node_counts(traces, g)
        else:
            data["counts"] = node_counts(traces, graph)
        data["calibration"] = {**traces.summary(), "simulated": simulate(traces, graph)}
    path = Path(path)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return path


def load_graph(path: str | Path) -> DraftGraph:
    """A `DraftGraph` or `PhasedDraftGraph` from a JSON file, with clear errors."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"cannot read draft graph file {path}: {err.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"draft graph file {path} is not valid JSON: {err}") from None
    try:
        if isinstance(data, dict) and data.get("format") == PHASED_FORMAT:
            return PhasedDraftGraph.from_dict(data)
        return DraftGraph.from_dict(data)
    except ValueError as err:
        raise ValueError(f"draft graph file {path}: {err}") from None


def stored_counts(path: str | Path) -> list[int] | None:
    """The node counts saved with a calibrated graph (None if the file has none)."""
    data = json.loads(Path(path).read_text())
    counts = data.get("counts") if isinstance(data, dict) else None
    if counts is None:
        return None
    if not isinstance(counts, list) or not all(isinstance(c, int) for c in counts):
        raise ValueError(f"draft graph file {path}: 'counts' must be a list of ints")
    return counts


__all__ = [
    "OBJECTIVES",
    "PhasedDraftGraph",
    "TraceBlock",
    "TraceStep",
    "Traces",
    "calibrate",
    "collect_traces",
    "load_graph",
    "node_counts",
    "save_graph",
    "select_graph",
    "select_phased_graph",
    "simulate",
    "stored_counts",
    "trace_step",
]
