"""The step API: Spiffy for a decoder that owns its model call and its loop
(docs/INTEGRATION.md).

`generate` runs the whole decode. A foreign loop (LLaDA's or Fast-dLLM's ``generate``, a
serving engine) keeps its own sequence and model call and asks `SpiffyStepper` two things per
forward:

1. `SpiffyStepper.propose`: the drafts to verify beside the block's current state (from the
   marginals of the logits last walked, or of logits the caller gives), as a `Proposal` that
   builds the forward's inputs (`Proposal.inputs`: ids, position ids, the `SegmentLayout`,
   `VerifyInputs.split` to read the logits; `Proposal.additive_mask` for attention without
   the kernel);
2. `SpiffyStepper.advance`: given the forward's root and draft logits, the walk (the
   transition rule on the root's logits, then on every verified draft the true state reaches)
   and its `StepResult`: the block's new state, the tokens committed, the steps advanced.

The walk is `generate`'s own (`methods.walk_states`, same rule, same per-step noise keys), and
the drafts are its own (`SpiffyMethod.make_drafts`), so a loop that verifies what `propose`
gives reproduces `generate`'s tokens and forward count exactly (tests/test_step_api.py).

Example (no cache, each draft a batch row: exact)::

    stepper = SpiffyStepper(prompt.shape[1], mask_id=mask_id, gen_length=64, block_length=32,
                            graph=8, max_drafts=None)
    x = torch.cat([prompt, torch.full((1, 64), mask_id)], dim=1)
    hint = None
    for start in stepper.block_starts:
        block = stepper.begin_block(x, start, hint=hint)
        while not block.done:
            inputs = stepper.propose(block).inputs(x)
            logits = model(inputs.input_ids)              # the caller's forward
            root, drafts, hint = inputs.split(logits)
            result = stepper.advance(block, root, drafts)
            x[0, block.start : block.end] = result.state
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from ..layout import SegmentLayout
from .drafting import Drafts
from .methods import Block, DecodeMethod, Forward, SpiffyMethod
from .settings import (
    DecodeSettings,
    check_int,
    resolve_drafting,
    resolve_filler,
    transition_rule,
)
from .stats import PhaseClock
from .verify import (
    CACHE_MODES,
    VERIFY_MODES,
    VerifyInputs,
    additive_mask,
    default_verify,
    is_exact,
)

__all__ = ["BlockState", "Proposal", "SpiffyStepper", "StepResult"]


@dataclass
class BlockState:
    """The block being decoded through a `SpiffyStepper`: positions ``[start, end)``, its
    current ``state`` ``[L]`` (token ids, the mask id where not decoded), the steps made inside
    it, the forwards given to `SpiffyStepper.advance`, and whether it is full."""

    start: int
    end: int
    state: torch.Tensor
    steps: int = 0
    forwards: int = 0
    done: bool = False

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass
class Proposal:
    """The drafts of one forward: ``drafts`` ``[D, L]`` (candidate states of the block; D may
    be 0) and their graph ``nodes``, for the block ``[start, end)``. ``prefill``: a cached
    mode's block-start forward (the caller fills its cache; no drafts)."""

    drafts: torch.Tensor
    nodes: tuple[int, ...]
    start: int
    end: int
    cache: str | None
    verify: str
    prefill: bool = False

    def __len__(self) -> int:
        return self.drafts.shape[0]

    def inputs(self, x: torch.Tensor) -> VerifyInputs:
        """The forward's inputs for the sequence ``x [1, T]`` (the block holding its current
        state): ``input_ids``, ``position_ids``, ``layout`` and ``split(logits)`` -> ``(root
        [L, V], drafts [D, L, V], hint)``. Built by the decoder's own builder
        (`decoding.verify.verify_inputs`)."""
        from .verify import verify_inputs

        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] != 1:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be the sequence [1, T], got {shape}")
        drafts = self.drafts.to(x.device)
        return verify_inputs(x, self.start, self.end, drafts, self.cache, self.verify)

    def additive_mask(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The layout of `inputs` as an additive ``[1, 1, Mq, Mk]`` mask (0 visible, the
        dtype's minimum hidden), for attention without the kernel."""
        layout: SegmentLayout = self.inputs(x).layout
        return additive_mask(layout, dtype, x.device)


@dataclass
class StepResult:
    """What one forward advanced: the block's new ``state`` ``[L]``, the ``positions``
    (absolute) and ``tokens`` committed by it, the ``steps`` advanced (1 + the drafts walked
    through), the states walked to (``path``) and whether the block is full (``done``)."""

    state: torch.Tensor
    positions: torch.Tensor
    tokens: torch.Tensor
    steps: int
    done: bool
    path: list[list[int]] = field(default_factory=list)


class _Run:
    """What `methods.walk_states` and `SpiffyMethod.make_drafts` read of a decode run: the
    settings, the block's state (``x [1, L]``), the global step, statistics and a clock."""

    def __init__(self, settings: DecodeSettings, method: DecodeMethod, device):
        self.settings = settings
        self.stats = method.new_stats()
        self.stats.node_verified = [0] * method.num_nodes
        self.stats.node_accepted = [0] * method.num_nodes
        self.clock = PhaseClock(self.stats.time_s, device)
        self.x = None
        self.step = 0


class SpiffyStepper:
    """Spiffy's drafts and walk for a loop that owns the model call (module docstring).

    Args:
        prompt_length: tokens before the generation (the first block starts there).
        mask_id: the mask token's id.
        gen_length, block_length, steps, temperature, remasking, threshold, factor, seed,
            backend, filler: as `generate`'s (the same rule, the same per-step noise).
        graph: the draft graph (None: vanilla, no drafts; an int budget; a `DraftGraph`; a
            JSON path).
        max_drafts: None (every filled node) or an int cap. ``"auto"`` is `generate`'s: it
            times the verify forward, which here the caller owns.
        cache, verify: what `Proposal.inputs` builds (`generate`'s meaning; default: no cache,
            each draft a batch row). With a cache the first forward of each block is the
            caller's prefill: `propose` gives no drafts for it.
        device: where drafts and states live (the caller's sequence's device).
    """

    def __init__(
        self,
        prompt_length: int,
        *,
        mask_id: int,
        gen_length: int,
        block_length: int,
        steps: int | None = None,
        temperature: float = 0.0,
        remasking: str = "low_confidence",
        threshold: float | None = None,
        factor: float | None = None,
        graph=8,
        max_drafts: int | None = None,
        seed: int = 0,
        backend: str = "auto",
        filler=None,
        cache: str | None = None,
        verify: str | None = None,
        device: torch.device | str = "cpu",
    ):
        check_int("prompt_length", prompt_length)
        check_int("mask_id", mask_id, minimum=0)
        gen_length = check_int("gen_length", gen_length)
        block_length = check_int("block_length", block_length)
        if gen_length % block_length:
            raise ValueError(
                f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})"
            )
        if cache is not None and cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {(None, *CACHE_MODES)}, got {cache!r}")
        verify = default_verify(cache) if verify is None else verify
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES} or None, got {verify!r}")
        if isinstance(max_drafts, str) or not (max_drafts is None or isinstance(max_drafts, int)):
            raise ValueError(
                "max_drafts must be None or an int >= 1 here ('auto' times the verify forward, "
                f"which the caller owns), got {max_drafts!r}"
            )
        rule = transition_rule(
            mask_id,
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
        self.device = torch.device(device)
        settings = DecodeSettings(
            prompt=torch.zeros((1, prompt_length), dtype=torch.int64),
            gen_length=gen_length,
            block_length=block_length,
            cache=cache,
            verify=verify,
            exact=is_exact(cache, verify),
            model_verifier=None,
            rule=rule,
            seed=seed,
            backend=backend,
        )
        # drafting resolves the graph and the cap; the model only names a cost model ("auto")
        spec = SimpleNamespace(config=SimpleNamespace(mask_token_id=mask_id), device=self.device)
        resolve_drafting(settings, spec, graph, max_drafts)
        settings.filler = resolve_filler(filler, backend)
        self.settings = settings
        self.method = DecodeMethod(settings) if settings.graph is None else SpiffyMethod(settings)
        self._run = _Run(settings, self.method, self.device)
        self._block: Block | None = None
        self._owner: BlockState | None = None

    # ---------------------------------------------------------------- blocks

    @property
    def block_starts(self) -> range:
        """The start of every block, in decoding order."""
        return self.settings.block_starts

    @property
    def step(self) -> int:
        """Steps taken so far over all blocks (the rule's global step, which keys the noise)."""
        return self._run.step

    @property
    def stats(self):
        """`DecodeStats` of the drafts: ``node_verified`` / ``node_accepted`` per graph node,
        ``drafts_verified``, ``nfe`` (forwards given to `advance`)."""
        return self._run.stats

    def begin_block(self, x: torch.Tensor, start: int, *, hint: torch.Tensor | None = None):
        """Start the block at `start` of the sequence ``x`` (``[1, T]`` or ``[T]``); `hint`:
        logits ``[L, V]`` of this block's rows from the caller's last forward (the uncached
        and prefix modes' ``split`` gives them), which lets the block's first forward carry
        drafts. Blocks go in `block_starts` order."""
        s = self.settings
        if start not in s.block_starts:
            raise ValueError(f"start must be one of the block starts {list(s.block_starts)}")
        row = x[0] if x.dim() == 2 else x
        if row.shape[0] != s.total_length:
            raise ValueError(
                f"x has {row.shape[0]} positions; prompt_length + gen_length = {s.total_length}"
            )
        end = start + s.block_length
        state = row[start:end].to(self.device, torch.int64).clone()
        self._run.x = state[None].clone()
        self._block = Block(0, s.block_length, torch.arange(start, end, device=self.device))
        self._owner = BlockState(start, end, state)
        self.method.begin_block(self._run, self._block, hint)
        return self._owner

    def _check_block(self, block: BlockState) -> None:
        if block is not self._owner:
            raise ValueError("block must be the BlockState of the last begin_block call")
        if block.done:
            raise ValueError(f"the block [{block.start}, {block.end}) is already full")

    # ---------------------------------------------------------------- one forward

    def propose(self, block: BlockState, logits: torch.Tensor | None = None) -> Proposal:
        """The drafts to verify beside `block`'s current state in the next forward. They come
        from the marginals of the logits last walked (`advance`), or of `logits` ``[L, V]``
        (logits of the block's current state) when given; none at a block's first forward
        without a hint, and none for a cached mode's prefill."""
        self._check_block(block)
        run, method = self._run, self.method
        if logits is not None and isinstance(method, SpiffyMethod):
            if logits.dim() != 2 or logits.shape[0] != block.length:
                raise ValueError(
                    f"logits must be [L, V] = [{block.length}, V] for the block, got "
                    f"{tuple(logits.shape)}"
                )
            method.p_last = method.last_marginals(logits, self._block.positions)
        prefill = self.settings.cache is not None and block.forwards == 0
        if prefill:
            drafts = Drafts(run.x.new_empty((0, block.length)), ())
        else:
            drafts = method.make_drafts(run, self._block)
        self._drafts = drafts
        s = self.settings
        return Proposal(
            drafts.states, drafts.nodes, block.start, block.end, s.cache, s.verify, prefill
        )

    def advance(
        self,
        block: BlockState,
        root_logits: torch.Tensor,
        draft_logits: torch.Tensor | None = None,
        hint: torch.Tensor | None = None,
    ) -> StepResult:
        """Walk the forward of the last `propose`: the rule on `root_logits` ``[L, V]`` (the
        block's current state), then on ``draft_logits[k]`` ``[D, L, V]`` whenever the true
        state equals draft ``k``. `hint` is accepted (and ignored) so that ``advance(block,
        *inputs.split(logits))`` reads naturally; pass it to the next `begin_block`."""
        del hint
        self._check_block(block)
        drafts = getattr(self, "_drafts", None)
        if drafts is None:
            raise ValueError("advance needs the drafts of a propose call first")
        length = block.length
        if root_logits.dim() != 2 or root_logits.shape[0] != length:
            raise ValueError(
                f"root_logits must be [L, V] = [{length}, V], got {tuple(root_logits.shape)}"
            )
        d = len(drafts)
        if d and (
            draft_logits is None or tuple(draft_logits.shape[:2]) != (d, length)
        ):  # drafts proposed: their logits are needed
            got = None if draft_logits is None else tuple(draft_logits.shape)
            raise ValueError(f"draft_logits must be [D, L, V] = [{d}, {length}, V], got {got}")
        run, method = self._run, self.method
        run.stats.nfe += 1
        run.stats.drafts_verified += d
        for node in drafts.nodes:
            run.stats.node_verified[node] += 1
        before = run.x[0].clone()
        forward = Forward(
            drafts, root_logits, draft_logits if d else None, None, time.perf_counter()
        )
        walk = method.walk(run, self._block, forward)
        method.after_walk(run, self._block, forward, walk)
        run.x[0] = walk.state
        self._drafts = None
        state = walk.state.clone()
        changed = (before != state).nonzero().flatten()
        block.state, block.done = state, walk.done
        block.steps += walk.advanced
        block.forwards += 1
        run.stats.steps_per_forward[walk.advanced] += 1
        return StepResult(
            state=state,
            positions=changed + block.start,
            tokens=state[changed],
            steps=walk.advanced,
            done=walk.done,
            path=walk.path,
        )
