"""`generate`'s arguments checked and resolved once, before any forward: `DecodeSettings`.

Errors name the argument and what was expected; the checks run in a fixed order (prompt,
lengths, cache, verify, seed, schedule, rule, graph and budget, filler), so a call with several
bad arguments always reports the same one.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from ..contract import MAX_TOP_K
from ..graph import DraftGraph
from ..types import CACHE_MODES, METHODS, VERIFY_MODES
from .budget import AutoDraftBudget, shared_budget
from .cost_model import cost_model_key
from .drafting import Filler
from .noise_fill import NoiseAwareFiller
from .rules import SCHEDULE_THRESHOLD_RULES, TransitionRule, num_transfer_tokens
from .verify import default_verify, is_exact


@dataclass
class DecodeSettings:
    """One `generate` call's resolved settings (everything but the model and the method)."""

    prompt: torch.Tensor  # [1, P] int64 on the model's device
    gen_length: int
    block_length: int
    cache: str | None
    verify: str
    exact: bool
    model_verifier: object | None  # the model's own verifier (`spiffy_verifier` hook)
    rule: TransitionRule
    seed: int
    backend: str
    graph: DraftGraph | None = None
    auto: AutoDraftBudget | None = None  # the cost-aware budget of max_drafts="auto"
    max_drafts: int | None = None
    filler: Filler | None = None
    cost_key: str | None = None

    @property
    def prompt_length(self) -> int:
        return self.prompt.shape[1]

    @property
    def total_length(self) -> int:
        return self.prompt_length + self.gen_length

    @property
    def block_starts(self) -> range:
        return range(self.prompt_length, self.total_length, self.block_length)


# generate's methods (`spiffy_triton.types.Method`): Spiffy (vanilla without a graph) and
# SimSD (`decoding.simsd`).


def resolve_method(method, graph, draft, threshold=None, factor=None) -> str:
    """`generate`'s method, checked against `graph`, `draft` and the rule's arguments."""
    if method is None:
        method = "spiffy"
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} or None, got {method!r}")
    if method.startswith("simsd"):
        if graph is not None:
            raise ValueError(f"graph is Spiffy's draft graph; method={method!r} takes draft=")
    elif draft is not None:
        raise ValueError(f"draft is SimSD's reference source; method={method!r} does not use it")
    if method == "vanilla" and graph is not None:
        raise ValueError("method='vanilla' takes no graph (method='spiffy' verifies drafts)")
    if method == "simsd" and (threshold is not None or factor is not None):
        raise ValueError(
            "method='simsd' commits tokens left to right by token-level acceptance; "
            "threshold / factor do not apply (method='simsd-exact' keeps vanilla's rule)"
        )
    return method


def check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def validate_prompt(model, prompt_ids) -> torch.Tensor:
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
    device = getattr(model, "device", None)
    if isinstance(device, torch.device) and device.type == "meta":
        raise ValueError(
            "model is on the meta device: its weights hold no data (load it with load_model, "
            "or model.to_empty(device=...) and load a state dict)"
        )
    if prompt_ids.device.type == "meta":
        raise ValueError(
            "prompt_ids is on the meta device: it holds no token ids (build it with "
            "torch.tensor([tokenizer.encode(text)]))"
        )
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


class BlockLengthWarning(UserWarning):
    """`generate` decodes a block-causal model in blocks other than the ones it was trained on."""


def resolve_block_length(model, block_length) -> int:
    """`generate`'s block_length: None is the model's trained block size (a block-causal model's
    ``trained_block_size``: SDAR's config ``block_size``); a bidirectional model has none, so
    it needs one. A block-causal model decoded in blocks of another length warns
    (`BlockLengthWarning`): it runs, exactly as asked, but its text may be worse."""
    trained = getattr(model, "trained_block_size", None)
    if block_length is None:
        if trained is None:
            raise ValueError(
                f"block_length is required: {type(model).__name__} has no trained block size "
                "(a bidirectional model decodes blocks of any length; LLaDA uses 32)"
            )
        return trained
    block_length = check_int("block_length", block_length)
    if trained is not None and block_length != trained:
        import warnings

        warnings.warn(
            f"block_length={block_length} differs from the block size this block-causal model "
            f"was trained with ({trained}, config block_size): it never saw other blocks in "
            f"training, so its text may be worse; pass block_length={trained} or leave it out",
            BlockLengthWarning,
            stacklevel=_caller_stacklevel(),
        )
    return block_length


def _caller_stacklevel() -> int:
    """The `stacklevel` that points a warning at the user's line: the first frame outside
    this package and torch's decorator wrappers (`torch.no_grad`), however many of the
    package's own frames (generate, decode, a batch's row) stand between."""
    import sys

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1  # the frame that calls warnings.warn is level 1
    while frame is not None and (
        frame.f_code.co_filename.startswith(package)
        or "torch" + os.sep + "utils" + os.sep + "_contextlib" in frame.f_code.co_filename
    ):
        frame, level = frame.f_back, level + 1
    return level


def check_lengths(model, prompt_length: int, gen_length, block_length) -> tuple[int, int]:
    gen_length = check_int("gen_length", gen_length)
    block_length = resolve_block_length(model, block_length)
    if gen_length % block_length:
        raise ValueError(
            f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})"
        )
    total = prompt_length + gen_length
    max_len = model.config.max_sequence_length
    if total > max_len:
        raise ValueError(
            f"prompt ({prompt_length} tokens) + gen_length ({gen_length}) = {total} exceeds the "
            f"model's max_sequence_length ({max_len})"
        )
    return gen_length, block_length


def resolve_verify(model, cache, verify) -> tuple[str, object | None]:
    """The verification mode and the model's own verifier, if it has one. Hook
    (docs/MODELS.md): a model with its own verification (Dream's shifted logits, SDAR's
    block-causal attention) builds its verifier, which resolves `verify` and says if exact."""
    if cache is not None and cache not in CACHE_MODES:
        choices = (None, "none", *CACHE_MODES)  # "none" is the command line's None
        raise ValueError(f"cache must be one of {choices}, got {cache!r}")
    model_verifier = None
    if hasattr(model, "spiffy_verifier"):
        model_verifier = model.spiffy_verifier(cache, verify)
        verify = model_verifier.verify
    if verify is None:
        verify = default_verify(cache)
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES} or None, got {verify!r}")
    return verify, model_verifier


def step_schedule(
    steps, *, threshold, factor, remasking, gen_length: int, block_length: int
) -> tuple[int, ...] | None:
    """LLaDA's per-block schedule of `steps`, or None for the threshold and factor rules."""
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
        return None
    num_blocks = gen_length // block_length
    steps = gen_length if steps is None else check_int("steps", steps)
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
    return tuple(num_transfer_tokens(block_length, steps // num_blocks))


def resolve_graph(graph, block_length: int | None = None) -> DraftGraph | None:
    """`generate`'s graph: an int budget is the best default graph that fits `block_length`."""
    if graph is None or isinstance(graph, DraftGraph):
        return graph
    if isinstance(graph, bool):
        raise ValueError(f"graph must be None, a DraftGraph, a JSON path or a budget, got {graph}")
    if isinstance(graph, int):
        try:
            return DraftGraph.default(graph, block_length=block_length)
        except ValueError as error:
            raise ValueError(f"graph={graph} (block_length={block_length}): {error}") from None
    if isinstance(graph, (str, os.PathLike)):
        return DraftGraph.load(graph)
    raise ValueError(
        "graph must be None (vanilla), a DraftGraph, a path to a graph JSON file or an int "
        f"budget 1..16, got {type(graph).__name__}"
    )


def resolve_budget(max_drafts, model, setting) -> AutoDraftBudget | None:
    """The cost-aware budget of ``max_drafts="auto"`` (the process's budget for `model` under
    `setting`, `shared_budget`) or an `AutoDraftBudget`; None otherwise."""
    if isinstance(max_drafts, AutoDraftBudget):
        return max_drafts
    if max_drafts == "auto":
        return shared_budget(model, setting)
    if isinstance(max_drafts, str):
        raise ValueError(
            "max_drafts must be 'auto', an int >= 1, None or 'all' (every node), "
            f"got {max_drafts!r}"
        )
    return None


def resolve_drafting(settings: DecodeSettings, model, graph, max_drafts) -> None:
    """Set the draft graph, the auto budget (or the int cap) and the cost key of `settings`."""
    draft_graph = resolve_graph(graph, settings.block_length)
    if draft_graph is None:
        if max_drafts not in (None, "auto"):
            raise ValueError("max_drafts needs a graph (graph=None is vanilla decoding)")
        return
    draft_graph.validate_for_block(settings.block_length)

    if draft_graph.max_token_rank > MAX_TOP_K:
        raise ValueError(
            f"graph uses token rank {draft_graph.max_token_rank}; marginals give at most "
            f"top_k={MAX_TOP_K}"
        )
    cost_key = cost_model_key(model, settings.cache, settings.verify)
    setting = (
        cost_key,
        draft_graph,
        settings.block_length,
        dataclasses.replace(settings.rule, seed=0),
    )
    auto = resolve_budget(max_drafts, model, setting)
    if auto is None and max_drafts is not None:
        check_int("max_drafts", max_drafts)
    settings.graph, settings.auto, settings.cost_key = draft_graph, auto, cost_key
    settings.max_drafts = None if auto is not None else max_drafts


def resolve_filler(filler, backend: str) -> Filler | None:
    if filler == "noise":
        return NoiseAwareFiller(backend=backend)
    if isinstance(filler, str):
        raise ValueError(f"filler must be a Filler callable, 'noise' or None, got {filler!r}")
    return filler


def resolve_settings(
    model,
    prompt_ids,
    *,
    gen_length,
    block_length,
    steps,
    temperature,
    remasking,
    threshold,
    factor,
    cache,
    graph,
    max_drafts,
    verify,
    seed,
    backend,
    filler,
) -> DecodeSettings:
    """Check `generate`'s arguments (in the order of the module docstring) and resolve them."""
    prompt = validate_prompt(model, prompt_ids)
    gen_length, block_length = check_lengths(model, prompt.shape[1], gen_length, block_length)
    verify, model_verifier = resolve_verify(model, cache, verify)
    rule = transition_rule(
        model.config.mask_token_id,
        steps=steps,
        remasking=remasking,
        temperature=temperature,
        threshold=threshold,
        factor=factor,
        seed=seed,
        backend=backend,
        gen_length=gen_length,
        block_length=block_length,
    )
    settings = DecodeSettings(
        prompt=prompt,
        gen_length=gen_length,
        block_length=block_length,
        cache=cache,
        verify=verify,
        exact=is_exact(cache, verify) if model_verifier is None else model_verifier.exact,
        model_verifier=model_verifier,
        rule=rule,
        seed=seed,
        backend=backend,
    )
    resolve_drafting(settings, model, graph, max_drafts)
    settings.filler = resolve_filler(filler, backend)
    return settings


def transition_rule(
    mask_id: int,
    *,
    steps,
    remasking,
    temperature,
    threshold,
    factor,
    seed,
    backend,
    gen_length: int,
    block_length: int,
) -> TransitionRule:
    """The transition rule R of a decode: the seed checked, the step schedule of the blocks,
    the remasking rule. One builder for `generate` and the step API (`decoding.steps`)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    schedule = step_schedule(
        steps,
        threshold=threshold,
        factor=factor,
        remasking=remasking,
        gen_length=gen_length,
        block_length=block_length,
    )
    return TransitionRule(
        mask_id=mask_id,
        remasking=remasking,
        temperature=temperature,
        threshold=threshold,
        factor=factor,
        schedule=schedule,
        seed=seed,
        backend=backend,
    )
