"""`generate`: vanilla and Spiffy decoding of a LLaDA-style model (DESIGN.md sections 2, 7, 7b).

The generation is cut into blocks of ``block_length`` positions decoded left to right. Inside
a block, every step applies the transition rule ``R`` (`spiffy_triton.rules`) to the logits of
the current state. Vanilla decoding (``graph=None``) runs one forward per step. Spiffy fills the
draft graph's formulas into the current state, verifies them in the same forward as the root,
then walks: apply ``R`` to the root's logits; while the new state equals a verified draft, apply
``R`` to that draft's logits; stop at the first state not verified. Both paths call the same
rule with the same per-step randomness, so Spiffy reproduces vanilla's states exactly whenever
a draft's logits equal the ones vanilla computes for that state.

Caches (Fast-dLLM): ``cache="prefix"`` keeps the keys before the block, ``"dual"`` the keys
before and after it, both computed by one full forward at the start of each block (counted
as a forward; its logits make the block's first step, without drafts) and frozen while the
block is decoded.

Verification (``verify=``), and when it is exact (docs/DECODING.md):

- ``"packed"``: one sequence of batch 1, drafts packed behind the real rows under a
  `SegmentLayout`. With ``cache="dual"`` a draft sees the frozen prefix and suffix and itself,
  exactly what vanilla's cached forward sees: exact. With ``cache="prefix"`` each draft carries
  its own copy of the suffix (the suffix attends to the block, so it must see the draft): exact.
  With ``cache=None`` the context rows are shared and see the root, not the draft: near-lossless.
- ``"batch"``: each draft is another batch row holding the whole query sequence: exact for
  every cache mode (costs ``(1 + D)`` full rows).

The default (``verify=None``) is the exact one: ``"batch"`` without cache, ``"packed"`` with one.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .cost_model import (
    PROBE_DRAFT_COUNTS,
    AutoDraftBudget,
    cost_model_key,
    probe_verify_cost,
    shared_budget,
    verify_shape,
)
from .drafting import Drafts, Filler, fill_drafts
from .graph import DraftGraph
from .layout import FULL, NONE, SegmentLayout
from .noise_fill import NoiseAwareFiller
from .rules import (
    SCHEDULE_THRESHOLD_RULES,
    TransitionRule,
    block_marginals,
    num_transfer_tokens,
)

CACHE_MODES = (None, "prefix", "dual")
# generate's methods: Spiffy (vanilla without a graph) and SimSD (`spiffy_triton.simsd`).
METHODS = ("vanilla", "spiffy", "simsd", "simsd-exact")
VERIFY_MODES = ("packed", "batch")
PHASES = ("model", "drafting", "layout", "marginals", "walk")


def default_verify(cache: str | None) -> str:
    """The exact verification mode of a cache setting."""
    return "batch" if cache is None else "packed"


def is_exact(cache: str | None, verify: str) -> bool:
    """Whether a draft's logits equal vanilla's for the same state (section 2, Lossless)."""
    return not (cache is None and verify == "packed")


@dataclass
class DecodeStats:
    """What one `generate` call did.

    ``steps_per_forward[n]``: how many forwards advanced ``n`` steps. ``node_verified[k]`` /
    ``node_accepted[k]``: how often graph node ``k`` was verified / walked through.
    ``time_s``: wall time per phase (model, drafting, layout, marginals, walk) and in total.
    """

    nfe: int = 0
    steps: int = 0
    gen_length: int = 0
    cache: str | None = None
    verify: str = "batch"
    exact: bool = True
    graph: str | None = None
    draft_budget: dict | None = None  # max_drafts="auto": `AutoDraftBudget.summary()`
    drafts_verified: int = 0
    steps_per_forward: collections.Counter = field(default_factory=collections.Counter)
    node_verified: list[int] = field(default_factory=list)
    node_accepted: list[int] = field(default_factory=list)
    time_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))

    @property
    def total_time_s(self) -> float:
        return self.time_s.get("total", sum(self.time_s[p] for p in PHASES))

    @property
    def steps_per_nfe(self) -> float:
        return self.steps / self.nfe if self.nfe else 0.0

    @property
    def tokens_per_second(self) -> float:
        total = self.total_time_s
        return self.gen_length / total if total > 0 else 0.0

    @property
    def acceptance(self) -> list[float]:
        """Per node: accepted / verified (0 where never verified)."""
        return [a / v if v else 0.0 for a, v in zip(self.node_accepted, self.node_verified)]

    def to_dict(self) -> dict:
        return {
            "nfe": self.nfe,
            "steps": self.steps,
            "gen_length": self.gen_length,
            "cache": self.cache,
            "verify": self.verify,
            "exact": self.exact,
            "graph": self.graph,
            "draft_budget": self.draft_budget,
            "drafts_verified": self.drafts_verified,
            "steps_per_nfe": self.steps_per_nfe,
            "steps_per_forward": {str(k): v for k, v in sorted(self.steps_per_forward.items())},
            "node_verified": list(self.node_verified),
            "node_accepted": list(self.node_accepted),
            "acceptance": self.acceptance,
            "time_s": dict(self.time_s),
            "tokens_per_second": self.tokens_per_second,
        }


class GenerateOutput(NamedTuple):
    tokens: torch.Tensor  # LongTensor [1, P + gen_length]
    nfe: int  # forward passes (prefills included)
    steps: int  # transitions made
    stats: DecodeStats


class _Clock:
    """Accumulates wall time per phase (synchronising CUDA so GPU work lands in its phase)."""

    def __init__(self, times: dict[str, float], device: torch.device):
        self.times = times
        self.cuda = device.type == "cuda"
        self.last = self._now()

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self, phase: str) -> None:
        now = self._now()
        self.times[phase] += now - self.last
        self.last = now


def _resolve_graph(graph) -> DraftGraph | None:
    if graph is None or isinstance(graph, DraftGraph):
        return graph
    if isinstance(graph, bool):
        raise ValueError(f"graph must be None, a DraftGraph, a JSON path or a budget, got {graph}")
    if isinstance(graph, int):
        return DraftGraph.default(graph)
    if isinstance(graph, (str, os.PathLike)):
        return DraftGraph.load(graph)
    raise ValueError(
        "graph must be None (vanilla), a DraftGraph, a path to a graph JSON file or an int "
        f"budget 1..16, got {type(graph).__name__}"
    )


def _resolve_method(method, graph, draft) -> str:
    """`generate`'s method, checked against `graph` and `draft`."""
    if method is None:
        method = "spiffy"
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} or None, got {method!r}")
    if method.startswith("simsd"):
        if graph is not None:
            raise ValueError(f"graph is Spiffy's draft graph; method={method!r} takes draft=")
        if draft is None:
            raise ValueError(
                f"method={method!r} needs draft=: 'self' (the target at one step), 'previous', "
                "a draft model of the same vocabulary, or a spiffy_triton.simsd.DraftSource"
            )
    elif draft is not None:
        raise ValueError(f"draft is SimSD's reference source; method={method!r} does not use it")
    if method == "vanilla" and graph is not None:
        raise ValueError("method='vanilla' takes no graph (method='spiffy' verifies drafts)")
    return method


def _resolve_budget(max_drafts, model, setting) -> AutoDraftBudget | None:
    """The cost-aware budget of ``max_drafts="auto"`` (the process's budget for `model` under
    `setting`, `shared_budget`) or an `AutoDraftBudget`; None otherwise."""
    if isinstance(max_drafts, AutoDraftBudget):
        return max_drafts
    if max_drafts == "auto":
        return shared_budget(model, setting)
    if isinstance(max_drafts, str):
        raise ValueError(f"max_drafts must be 'auto', an int >= 1 or None, got {max_drafts!r}")
    return None


def _probe_contexts(prompt_len: int, total_len: int, block_length: int, max_len: int):
    """(block start, total length) pairs the cost probe times: this run's first block, and
    the same generation behind a prompt as long as this whole run, or half as long, so the
    fit sees two context lengths."""
    longer = min(max_len, 2 * total_len)
    if longer - total_len >= block_length:
        return [(prompt_len, total_len), (prompt_len + longer - total_len, longer)]
    shorter = prompt_len // 2
    return [(prompt_len, total_len), (shorter, total_len - prompt_len + shorter)]


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _validate_prompt(model, prompt_ids) -> torch.Tensor:
    if not isinstance(prompt_ids, torch.Tensor):
        raise ValueError(f"prompt_ids must be a LongTensor [1, P], got {type(prompt_ids).__name__}")
    if prompt_ids.dim() == 1:
        raise ValueError(
            f"prompt_ids must be 2-D [1, P] (a batch of one), got shape {tuple(prompt_ids.shape)}"
            "; use prompt_ids[None]"
        )
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] != 1:
        raise ValueError(
            f"prompt_ids must have shape [1, P] (a batch of one), got {tuple(prompt_ids.shape)}"
        )
    if prompt_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"prompt_ids must be int64 or int32, got {prompt_ids.dtype}")
    if prompt_ids.shape[1] == 0:
        raise ValueError("prompt_ids is empty: the prompt needs at least one token")
    mask_id = model.config.mask_token_id
    hits = (prompt_ids[0] == mask_id).nonzero().flatten().tolist()
    if hits:
        raise ValueError(
            f"prompt_ids contains the mask id {mask_id} at positions {hits[:8]}: the prompt "
            "must be fully unmasked"
        )
    vocab = model.config.embedding_size
    lo, hi = int(prompt_ids.min()), int(prompt_ids.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(f"prompt_ids has ids in [{lo}, {hi}], outside the vocabulary [0, {vocab})")
    return prompt_ids.to(device=model.device, dtype=torch.int64)


def _prefix_cache_layout(prefix_len: int, real_rows: int, num_drafts: int) -> SegmentLayout:
    """Prefix-cache verification: query rows ``[real, draft_1 .. draft_D]``, each ``real_rows``
    long (block + suffix); keys ``[prefix, real, draft_1 .. draft_D]``. A draft sees the cached
    prefix and its own rows, visited in the slot of the real rows (same arithmetic)."""
    d = num_drafts
    visibility = [[FULL, FULL] + [NONE] * d]
    for i in range(d):
        row = [FULL, NONE] + [NONE] * d
        row[2 + i] = FULL
        visibility.append(row)
    return SegmentLayout(
        (real_rows,) * (1 + d),
        (prefix_len, real_rows) + (real_rows,) * d,
        visibility,
        key_order=(0, 1) + (1,) * d,
    )


class _Verifier:
    """Builds and runs the one forward that evaluates the root and its drafts."""

    def __init__(self, model, cache_mode: str | None, verify: str, clock: _Clock):
        self.model = model
        self.cache_mode = cache_mode
        self.verify = verify
        self.clock = clock
        self.kv = None

    def prefill(self, x: torch.Tensor, s: int, e: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Block-start forward of a cached mode: root logits ``[L, V]`` (and the cache)."""
        logits, self.kv = self.model.prefill(x, block_start=s, block_end=e, mode=self.cache_mode)
        self.clock.lap("model")
        return logits[0, s:e], None

    def __call__(self, x: torch.Tensor, s: int, e: int, drafts: torch.Tensor):
        """Logits of the root block ``[L, V]``, of each draft ``[D, L, V]``, and of the next
        block's positions from the root rows (``[L', V]`` or None when not computed)."""
        t = x.shape[1]
        length = e - s
        d = drafts.shape[0]
        device = x.device
        if self.cache_mode is None:
            layout = SegmentLayout.spiffy(s, length, t - e, d if self.verify == "packed" else 0)
            if self.verify == "packed":
                ids = torch.cat([x[0], drafts.reshape(-1)])[None]
                pos = torch.cat([torch.arange(t), torch.arange(s, e).repeat(d)]).to(device)
            else:
                ids = x.repeat(1 + d, 1)
                ids[1:, s:e] = drafts
                pos = torch.arange(t, device=device)
            self.clock.lap("layout")
            out = self.model(ids, position_ids=pos, layout=layout)
            self.clock.lap("model")
            if self.verify == "packed":
                root, draft_logits = out[0, s:e], out[0, t:].view(d, length, out.shape[-1])
            else:
                root, draft_logits = out[0, s:e], out[1:, s:e]
            return root, draft_logits, out[0, e : min(t, e + length)]
        if self.cache_mode == "dual":
            layout = SegmentLayout.spiffy(
                s, length, t - e, d if self.verify == "packed" else 0, cached=True
            )
            if self.verify == "packed":
                ids = torch.cat([x[0, s:e], drafts.reshape(-1)])[None]
                pos = torch.arange(s, e, device=device).repeat(1 + d)
            else:
                ids = torch.cat([x[:, s:e], drafts])
                pos = torch.arange(s, e, device=device)
            self.clock.lap("layout")
            out = self.model(ids, position_ids=pos, layout=layout, cache=self.kv)
            self.clock.lap("model")
            if self.verify == "packed":
                return out[0, :length], out[0, length:].view(d, length, out.shape[-1]), None
            return out[0], out[1:], None
        # prefix cache: real rows are the block and everything after it.
        real = t - s
        suffix = x[0, e:]
        if self.verify == "packed":
            layout = _prefix_cache_layout(s, real, d)
            rows = [x[0, s:]] + [torch.cat([draft, suffix]) for draft in drafts]
            ids = torch.cat(rows)[None]
            pos = torch.arange(s, t, device=device).repeat(1 + d)
        else:
            layout = _prefix_cache_layout(s, real, 0)
            ids = x[:, s:].repeat(1 + d, 1)
            ids[1:, :length] = drafts
            pos = torch.arange(s, t, device=device)
        self.clock.lap("layout")
        out = self.model(ids, position_ids=pos, layout=layout, cache=self.kv)
        self.clock.lap("model")
        hint = out[0, length : min(real, 2 * length)]
        if self.verify == "packed":
            per_row = out[0].view(1 + d, real, -1)
            return per_row[0, :length], per_row[1:, :length], hint
        return out[0, :length], out[1:, :length], hint


@torch.no_grad()
def generate(
    model,
    prompt_ids: torch.Tensor,
    *,
    gen_length: int,
    block_length: int,
    steps: int | None = None,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    threshold: float | None = None,
    factor: float | None = None,
    cache: str | None = None,
    graph=None,
    max_drafts: int | str | AutoDraftBudget | None = "auto",
    verify: str | None = None,
    seed: int = 0,
    backend: str = "auto",
    filler: Filler | str | None = None,
    method: str | None = None,
    draft=None,
) -> GenerateOutput:
    """Decode `gen_length` tokens after `prompt_ids` ``[1, P]``; see the module docstring.

    Args:
        steps: total steps of LLaDA's schedule (split evenly over blocks); default
            ``gen_length`` (one token per step). Not used by the threshold / factor rules.
        temperature: 0 for argmax, > 0 for Gumbel-max sampling keyed by (seed, step, position).
        remasking: ``"low_confidence"`` or ``"random"`` (schedule rules).
        threshold / factor: Fast-dLLM parallel unmasking rules (instead of the schedule).
        cache: None, ``"prefix"`` or ``"dual"``.
        graph: None (vanilla), a `DraftGraph`, a path to a graph JSON file, or an int budget
            (the default graph of that many nodes).
        max_drafts: ``"auto"`` (default): per forward, the drafts with the most expected steps
            per predicted unit of verify cost, measured on this machine (zero drafts when
            drafts do not pay; `spiffy_triton.cost_model`), learning across calls with the
            same model and setting (`shared_budget`); an `AutoDraftBudget` to give its cost
            model or acceptance prior, or to keep a run apart; an int: at most this many drafts
            per forward
            (dynamic pruning); None: every filled node of the graph.
        verify: ``"packed"`` or ``"batch"``; default the exact mode of `cache`.
        backend: backend of the marginals and ranking calls (the model's attention backend is
            fixed when the model is loaded).
        filler: custom draft filler (`spiffy_triton.drafting.Filler`), or ``"noise"``: fill
            along the predicted sampling trajectory (`spiffy_triton.noise_fill`).
        method: ``"spiffy"`` (the default: vanilla when `graph` is None), ``"vanilla"``,
            ``"simsd"`` (SimSD's token-level acceptance of a draft's reference tokens; not
            vanilla's output) or ``"simsd-exact"`` (vanilla's output, the references as
            candidate states); SimSD needs a block-causal model (`spiffy_triton.simsd`).
        draft: SimSD's reference tokens: ``"self"`` (the target, one step), ``"previous"``
            (the target's tokens from its previous forward of the block), a draft model of the
            same vocabulary, or a `spiffy_triton.simsd.DraftSource`.

    Returns `GenerateOutput(tokens [1, P + gen_length], nfe, steps, stats)`.
    """
    prompt = _validate_prompt(model, prompt_ids)
    method = _resolve_method(method, graph, draft)
    if method == "simsd" and (threshold is not None or factor is not None):
        raise ValueError(
            "method='simsd' commits tokens left to right by token-level acceptance; "
            "threshold / factor do not apply (method='simsd-exact' keeps vanilla's rule)"
        )
    gen_length = _check_int("gen_length", gen_length)
    block_length = _check_int("block_length", block_length)
    if gen_length % block_length:
        raise ValueError(
            f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})"
        )
    num_blocks = gen_length // block_length
    total = prompt.shape[1] + gen_length
    max_len = model.config.max_sequence_length
    if total > max_len:
        raise ValueError(
            f"prompt ({prompt.shape[1]} tokens) + gen_length ({gen_length}) = {total} exceeds the "
            f"model's max_sequence_length ({max_len})"
        )
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
    # Hook (docs/MODELS.md): a model with its own verification (Dream's shifted logits, SDAR's
    # block-causal attention) builds its verifier, which resolves `verify` and says if exact.
    model_verifier = None
    if hasattr(model, "spiffy_verifier"):
        model_verifier = model.spiffy_verifier(cache, verify)
        verify = model_verifier.verify
    if verify is None:
        verify = default_verify(cache)
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES} or None, got {verify!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")

    # SDAR's dynamic rule takes a threshold on top of the step schedule.
    parallel = (threshold is not None and remasking not in SCHEDULE_THRESHOLD_RULES) or (
        factor is not None
    )
    if parallel:
        if steps is not None:
            raise ValueError(
                "steps sets LLaDA's schedule; the threshold and factor rules choose how many "
                "tokens each step unmasks, so leave steps=None"
            )
        schedule = None
    else:
        steps = gen_length if steps is None else _check_int("steps", steps)
        if steps % num_blocks:
            raise ValueError(
                f"steps ({steps}) must divide evenly over the {num_blocks} blocks "
                f"(gen_length {gen_length} / block_length {block_length})"
            )
        if steps // num_blocks > block_length:
            raise ValueError(
                f"steps per block ({steps // num_blocks}) exceed block_length ({block_length}): "
                "each step must unmask at least one token"
            )
        schedule = tuple(num_transfer_tokens(block_length, steps // num_blocks))
    mask_id = model.config.mask_token_id
    rule = TransitionRule(
        mask_id=mask_id,
        remasking=remasking,
        temperature=temperature,
        threshold=threshold,
        factor=factor,
        schedule=schedule,
        seed=seed,
        backend=backend,
    )
    if method.startswith("simsd"):
        from .simsd import simsd_generate

        return simsd_generate(
            model,
            prompt,
            method=method,
            draft=draft,
            rule=rule,
            gen_length=gen_length,
            block_length=block_length,
            cache=cache,
            backend=backend,
        )

    draft_graph = _resolve_graph(graph)
    auto = None
    if draft_graph is not None:
        draft_graph.validate_for_block(block_length)
        from .reference.marginals import MAX_TOP_K

        if draft_graph.max_token_rank > MAX_TOP_K:
            raise ValueError(
                f"graph uses token rank {draft_graph.max_token_rank}; marginals give at most "
                f"top_k={MAX_TOP_K}"
            )
        cost_key = cost_model_key(model, cache, verify)
        setting = (
            cost_key,
            draft_graph,
            block_length,
            dataclasses.replace(rule, seed=0),
        )
        auto = _resolve_budget(max_drafts, model, setting)
        if auto is None and max_drafts is not None:
            _check_int("max_drafts", max_drafts)
    elif max_drafts not in (None, "auto"):
        raise ValueError("max_drafts needs a graph (graph=None is vanilla decoding)")
    if filler == "noise":
        filler = NoiseAwareFiller(backend=backend)
    elif isinstance(filler, str):
        raise ValueError(f"filler must be a Filler callable, 'noise' or None, got {filler!r}")

    stats = DecodeStats(
        gen_length=gen_length,
        cache=cache,
        verify=verify,
        exact=is_exact(cache, verify) if model_verifier is None else model_verifier.exact,
        graph=None if draft_graph is None else (draft_graph.name or f"{len(draft_graph)} nodes"),
    )
    if draft_graph is not None:
        stats.node_verified = [0] * len(draft_graph)
        stats.node_accepted = [0] * len(draft_graph)
    start_time = time.perf_counter()
    device = model.device
    clock = _Clock(stats.time_s, device)
    if model_verifier is None:
        verifier = _Verifier(model, cache, verify, clock)
    else:  # the hook's verifier (see above)
        model_verifier.clock = clock
        verifier = model_verifier
    top_k = draft_graph.max_token_rank if draft_graph is not None else 1
    if isinstance(filler, NoiseAwareFiller):
        top_k = max(top_k, filler.top_k)
    total_len = prompt.shape[1] + gen_length

    def shape_at(start: int):
        """The verify shape with ``k`` drafts of the block starting at `start`."""
        return functools.partial(verify_shape, cache, verify, start, block_length, total_len)

    if draft_graph is not None and auto is not None:

        def make_verifier():  # the probe's own verifier, off this run's clock
            probe_clock = _Clock(dict.fromkeys(PHASES, 0.0), device)
            if model_verifier is None:
                return _Verifier(model, cache, verify, probe_clock)
            probe = model.spiffy_verifier(cache, verify)
            probe.clock = probe_clock
            return probe

        auto.bind(
            draft_graph,
            lambda: probe_verify_cost(
                make_verifier,
                mask_id=mask_id,
                device=device,
                cache=cache,
                verify=verify,
                block_length=block_length,
                contexts=_probe_contexts(prompt.shape[1], total_len, block_length, max_len),
            )[0],
            cost_key,
            [shape_at(prompt.shape[1])(k) for k in PROBE_DRAFT_COUNTS],
        )
        clock.lap("drafting")

    # P_last can be read off the walk's own marginals (computed with top_k tokens) unless the
    # rule scores tempered logits; then the walk keeps top_k = 1 and P_last is computed apart.
    reuse_p_last = draft_graph is not None and rule.p_last_from_supported
    walk_top_k = top_k if reuse_p_last else 1

    def last_marginals(logits: torch.Tensor, positions: torch.Tensor):
        # P_last: probabilities and top tokens at T = 1, no noise (ranks are about probability).
        return block_marginals(
            logits,
            top_k=top_k,
            temperature=0.0,
            seed=seed,
            step=0,
            positions=positions,
            mask_id=mask_id,
            backend=backend,
        )

    x = torch.cat(
        [prompt, torch.full((1, gen_length), mask_id, dtype=torch.int64, device=device)], dim=1
    )
    step = 0
    hint = None  # next block's logits from the last root forward, if the mode computed them
    for b in range(num_blocks):
        s = prompt.shape[1] + b * block_length
        e = s + block_length
        positions = torch.arange(s, e, device=device)
        shape_of = shape_at(s)
        block_step = 0
        p_last = None
        if draft_graph is not None and hint is not None and hint.shape[0] == block_length:
            p_last = last_marginals(hint, positions)
            clock.lap("marginals")
        hint = None
        first = True
        while True:
            iteration_start = time.perf_counter()
            if cache is not None and first:
                root_logits, draft_logits = verifier.prefill(x, s, e)
                drafts = Drafts(x.new_empty((0, block_length)), ())
            else:
                drafts = Drafts(x.new_empty((0, block_length)), ())
                if draft_graph is not None and p_last is not None:
                    if isinstance(filler, NoiseAwareFiller):
                        filler.begin(
                            rule=rule, step=step, block_step=block_step, positions=positions
                        )
                    if auto is not None:
                        drafts = fill_drafts(
                            draft_graph,
                            x[0, s:e],
                            p_last,
                            mask_id,
                            filler=auto.filler(filler, shape_of, backend=backend),
                            backend=backend,
                        )
                    else:
                        drafts = fill_drafts(
                            draft_graph,
                            x[0, s:e],
                            p_last,
                            mask_id,
                            max_drafts=max_drafts,
                            filler=filler,
                            backend=backend,
                        )
                    clock.lap("drafting")
                model_s = stats.time_s["model"]
                root_logits, draft_logits, hint = verifier(x, s, e, drafts.states)
                if auto is not None:  # the budget refits its cost model on real forwards
                    auto.record_forward(
                        shape_of(len(drafts)),
                        (stats.time_s["model"] - model_s) * 1e3,
                        drafts=len(drafts),
                    )
            first = False
            stats.nfe += 1
            stats.drafts_verified += len(drafts)
            for node in drafts.nodes:
                stats.node_verified[node] += 1
            lookup = {tuple(row): k for k, row in enumerate(drafts.states.tolist())}

            # The walk: R on the root's logits, then on each verified draft the state reaches.
            block = x[0, s:e]
            logits = root_logits
            advanced = 0
            path = []  # the true states this forward walked to (for the auto budget)
            while True:
                marg = rule.marginals(logits, step=step, positions=positions, top_k=walk_top_k)
                clock.lap("marginals")
                block = rule.apply(
                    marg, block, step=step, block_step=block_step, positions=positions
                )
                step += 1
                block_step += 1
                advanced += 1
                state = block.tolist()
                path.append(state)
                done = mask_id not in state
                match = None if done else lookup.get(tuple(state))
                clock.lap("walk")
                if match is None:
                    break
                stats.node_accepted[drafts.nodes[match]] += 1
                logits = draft_logits[match]
            if auto is not None:
                auto.observe(path)
                auto.end_iteration(advanced, (time.perf_counter() - iteration_start) * 1e3)
            x[0, s:e] = block
            stats.steps_per_forward[advanced] += 1
            if done:
                break
            if draft_graph is not None:
                # The auto budget backs off after choosing no drafts: plain steps, no P_last.
                p_last = None
                if auto is None or auto.wants_drafts():
                    # The walk's last marginals are of these logits: P_last when they carry it.
                    p_last = (
                        rule.p_last_from(marg)
                        if reuse_p_last
                        else last_marginals(logits, positions)
                    )
                clock.lap("marginals")
    stats.steps = step
    if auto is not None:
        stats.draft_budget = auto.summary()
    stats.time_s["total"] = time.perf_counter() - start_time
    return GenerateOutput(tokens=x, nfe=stats.nfe, steps=step, stats=stats)
