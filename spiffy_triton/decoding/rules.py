"""Transition rules ``R``: one unmasking step of a block (docs/DESIGN.md §2).

``X' = R(logits, X, step)`` is a pure function of the block's logits, its state, the step and
the seed. Vanilla and Spiffy decoding both call `TransitionRule.marginals` then
`TransitionRule.apply` (or `TransitionRule.__call__`, which does both), so the two cannot drift
apart: Spiffy's walk applies exactly the vanilla rule to the logits of each state it reaches.

Which tokens: argmax at temperature 0, Gumbel-max of ``logits / T`` at ``T > 0``, the noise
keyed by ``(seed, step, absolute position, vocab id)`` (`spiffy_triton.dispatch.marginals`).

Which masked positions are committed:

- schedule rules (LLaDA): ``remasking="low_confidence"`` commits the ``n`` most confident
  masked positions, ``n`` from LLaDA's step schedule (`num_transfer_tokens`); confidence is the
  softmax probability (T = 1) of the chosen token. ``remasking="random"`` ranks masked
  positions by a uniform number keyed by ``(seed, step, position)`` instead (counter-based, not
  torch's RNG, so the same state at the same step always makes the same choice).
- ``threshold=tau`` (Fast-dLLM): every masked position whose confidence is ``>= tau``; at least
  the most confident one. A confidence exactly equal to ``tau`` is kept, as Fast-dLLM keeps it
  (it drops a candidate only when ``confidence < threshold``). ``tau`` is in ``[0, 1]``:
  ``tau = 0`` commits every masked position in one step, ``tau = 1`` only positions whose
  float64 probability is exactly 1 (in practice one token per step, the most confident).
- ``factor=f`` (Fast-dLLM): with masked confidences sorted ``c_1 >= c_2 >= ...``, the largest
  ``n`` such that ``(k + 1) * (1 - c_k) < f`` for every ``k <= n``; at least one.

Confidence (the probability of the chosen token, for every probability-based kind) is computed
from the logits in float64, as Fast-dLLM's ``softmax(logits.to(torch.float64))``: a float32
probability rounds every value within ~6e-8 of 1.0 to the same few numbers, so near-certain
positions would tie and the order upstream computes would be lost (issue #21). Exact ties in
float64 go to the lower position (`spiffy_triton.dispatch.rank_positions`). A rule
sees only the block's positions, so future blocks are never chosen. The mask token is never a
candidate token (its logit is set to -inf before the marginals).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import get_args

import torch

from .. import dispatch
from ..contract import philox_uint32
from ..types import (
    REMASKINGS,
    DreamRemasking,
    LLaDARemasking,
    MarginalsOutput,
    SDARRemasking,
)

LLADA_REMASKING = get_args(LLaDARemasking)

# --- Dream and SDAR confidence kinds (docs/MODELS.md) -------------------------------------
# Scored on the distribution tokens are drawn from, softmax(logits / T) (softmax(logits) at
# T = 0), as Dream's and SDAR's generate do. Dream: maskgit_plus (probability of the chosen
# token), topk_margin (top-1 minus top-2 probability), entropy (negative entropy). SDAR:
# low_confidence_static (probability of the chosen token, LLaDA's schedule) and
# low_confidence_dynamic (every masked position above `threshold` when there are at least the
# schedule's count of them, else the schedule's count of most confident).
DREAM_REMASKING = get_args(DreamRemasking)
SDAR_REMASKING = get_args(SDARRemasking)
TEMPERED_CONFIDENCE = DREAM_REMASKING + SDAR_REMASKING
# Rules that take a threshold on top of the step schedule.
SCHEDULE_THRESHOLD_RULES = ("low_confidence_dynamic",)
REMASKING = REMASKINGS  # LLADA_REMASKING + TEMPERED_CONFIDENCE, in that order
# --- end of Dream and SDAR kinds ---------------------------------------------------------

# Kinds whose confidence is the probability of the chosen token: `TransitionRule.marginals`
# reports it in float64 (module docstring).
PROBABILITY_CONFIDENCE = ("low_confidence", "maskgit_plus") + SDAR_REMASKING

# Philox stream of random remasking (stream 0 is the Gumbel noise of token sampling).
RANDOM_REMASK_STREAM = 1


def num_transfer_tokens(block_length: int, steps: int) -> list[int]:
    """LLaDA's schedule: how many tokens each of `steps` steps unmasks in a block of
    `block_length` masked positions (``n // s`` each, the remainder spread over the first)."""
    for name, value in (("block_length", block_length), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if steps > block_length:
        raise ValueError(
            f"steps per block ({steps}) exceed block_length ({block_length}): some steps would "
            "unmask no token"
        )
    base, remainder = divmod(block_length, steps)
    return [base + 1 if k < remainder else base for k in range(steps)]


def remasking_uniform(seed: int, step: int, positions: torch.Tensor) -> torch.Tensor:
    """Uniform (0, 1) float64 per position, a pure function of ``(seed, step, position)``.

    The Philox stream of the marginals reference (`philox_uint32`) on its own stream id, so
    random remasking is independent of the Gumbel noise that samples tokens.
    """
    bits = philox_uint32(seed, step, positions, 1, stream=RANDOM_REMASK_STREAM)[:, 0]
    return (bits.to(torch.float64) + 0.5) / 2.0**32


def block_marginals(
    logits: torch.Tensor,
    *,
    top_k: int,
    temperature: float,
    seed: int,
    step: int,
    positions: torch.Tensor,
    mask_id: int | None = None,
    backend: str = "auto",
) -> MarginalsOutput:
    """`dispatch.marginals` of a block's logits, the one way every caller computes them.

    The mask id, when given, is excluded from the vocabulary (a decoder must never commit the
    mask token; LLaDA's trained models give it a negligible probability anyway). Float64 logits
    go to the Triton kernel (which takes fp16 / bf16 / fp32) as float32.
    """
    if mask_id is not None and 0 <= mask_id < logits.shape[-1]:
        logits = logits.clone()
        logits[:, mask_id] = -math.inf
    if (
        logits.dtype == torch.float64
        and dispatch.resolve_backend(backend, (logits,), "marginals") == "triton"
    ):
        logits = logits.to(torch.float32)
    return dispatch.marginals(
        logits,
        top_k=top_k,
        temperature=temperature,
        seed=seed,
        step=step,
        positions=positions,
        backend=backend,
    )


def chosen_probability_f64(
    logits: torch.Tensor, token: torch.Tensor, mask_id: int | None = None
) -> torch.Tensor:
    """float64 ``softmax(logits)[row, token[row]]`` (the mask id excluded), computed as
    ``exp(logit - logsumexp)`` in float64 like Fast-dLLM's ``softmax(logits.to(float64))``, so
    confidences near 1 keep their order (module docstring)."""
    rows = logits.to(torch.float64)
    if mask_id is not None and 0 <= mask_id < rows.shape[-1]:
        rows = rows.clone()
        rows[:, mask_id] = -math.inf
    chosen = rows.gather(1, token.to(rows.device, torch.int64)[:, None])[:, 0]
    return torch.exp(chosen - torch.logsumexp(rows, dim=-1))


@dataclass(frozen=True)
class TransitionRule:
    """The unmasking rule of one decode run; see the module docstring.

    ``schedule`` is the per-block LLaDA schedule (a tuple of counts, one per step) for schedule
    rules, and None for the threshold and factor rules.
    """

    mask_id: int
    remasking: str = "low_confidence"
    temperature: float = 0.0
    threshold: float | None = None
    factor: float | None = None
    schedule: tuple[int, ...] | None = None
    seed: int = 0
    backend: str = "auto"

    def __post_init__(self):
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking must be one of {REMASKING}, got {self.remasking!r}")
        if not isinstance(self.temperature, (int, float)) or not (
            math.isfinite(self.temperature) and self.temperature >= 0
        ):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if self.threshold is not None and self.factor is not None:
            raise ValueError("give threshold or factor, not both")
        if self.threshold is not None and (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, (int, float))
            or not 0.0 <= self.threshold <= 1.0
        ):
            raise ValueError(
                f"threshold must be a number in [0, 1] (1.0: one token per step), "
                f"got {self.threshold!r}"
            )
        if self.factor is not None and not self.factor > 0:
            raise ValueError(f"factor must be > 0, got {self.factor!r}")
        scheduled_threshold = self.remasking in SCHEDULE_THRESHOLD_RULES  # SDAR dynamic
        if scheduled_threshold and self.threshold is None:
            raise ValueError(f"remasking={self.remasking!r} needs a threshold")
        parallel = (self.threshold is not None and not scheduled_threshold) or (
            self.factor is not None
        )
        if parallel and self.remasking != "low_confidence":
            raise ValueError(
                "threshold and factor rules rank by confidence; they need "
                f"remasking='low_confidence', got {self.remasking!r}"
            )
        if parallel and self.schedule is not None:
            raise ValueError("threshold and factor rules take no step schedule")
        if not parallel and not self.schedule:
            raise ValueError("a schedule rule needs a non-empty schedule (num_transfer_tokens)")

    @property
    def kind(self) -> str:
        if self.threshold is not None:
            return "threshold"
        if self.factor is not None:
            return "factor"
        return self.remasking

    def marginals(
        self, logits: torch.Tensor, *, step: int, positions: torch.Tensor, top_k: int = 1
    ) -> MarginalsOutput:
        """Token choice and confidence of the block's rows at global step `step`.

        `top_k`: top tokens to return besides (at least those the rule needs itself). They
        never change ``token`` or ``prob``; a drafter reads them (`p_last_from`). For the
        probability-based kinds ``prob`` is float64 (`chosen_probability_f64`)."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
        temperature = float(self.temperature)
        if self.remasking in TEMPERED_CONFIDENCE and temperature > 0:
            # Dream / SDAR: confidence of softmax(logits / T); Gumbel-max of (logits / T) / 1
            # picks what Gumbel-max of logits / T picks.
            logits, temperature = logits / temperature, 1.0
        marginals = block_marginals(
            logits,
            top_k=max(top_k, 2 if self.remasking == "topk_margin" else 1),
            temperature=temperature,
            seed=self.seed,
            step=step,
            positions=positions,
            mask_id=self.mask_id,
            backend=self.backend,
        )
        if self.remasking in PROBABILITY_CONFIDENCE:
            prob = chosen_probability_f64(logits, marginals.token, self.mask_id)
            marginals = marginals._replace(prob=prob)
        return marginals

    @property
    def p_last_from_supported(self) -> bool:
        """Whether `p_last_from` can read ``P_last`` off this rule's marginals."""
        return not (self.remasking in TEMPERED_CONFIDENCE and float(self.temperature) > 0)

    def p_last_from(self, marginals: MarginalsOutput) -> MarginalsOutput | None:
        """``P_last`` (T = 1 probabilities and top tokens, no noise) read off this rule's own
        `marginals` of the same logits, so the decoder need not compute them twice; None where
        they differ (Dream / SDAR confidence at T > 0 scores ``logits / T``)."""
        if not self.p_last_from_supported:
            return None
        return MarginalsOutput(
            token=marginals.topk_tokens[:, 0],
            prob=marginals.topk_probs[:, 0],
            topk_tokens=marginals.topk_tokens,
            topk_probs=marginals.topk_probs,
            lse=marginals.lse,
            entropy=marginals.entropy,
        )

    def apply(
        self,
        marginals: MarginalsOutput,
        state: torch.Tensor,
        *,
        step: int,
        block_step: int,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """The next state of the block ``[L]`` given its marginals at this step."""
        masked = state == self.mask_id
        num_masked = int(masked.sum())
        if num_masked == 0:
            raise ValueError("transition on a block with no masked position")
        if self.remasking == "random":
            confidence = remasking_uniform(self.seed, step, positions)
        elif self.remasking == "topk_margin":
            top = marginals.topk_probs.to(torch.float64)
            confidence = top[:, 0] - top[:, 1]
        elif self.remasking == "entropy":
            confidence = -marginals.entropy.to(torch.float64)
        else:
            confidence = marginals.prob.to(torch.float64)
        order = dispatch.rank_positions(confidence[None], masked[None], backend=self.backend)[0]
        count = self._count(confidence, order, num_masked, block_step)
        chosen = order[:count]
        new_state = state.clone()
        new_state[chosen] = marginals.token.to(state.dtype)[chosen]
        return new_state

    def _count(
        self, confidence: torch.Tensor, order: torch.Tensor, num_masked: int, block_step: int
    ) -> int:
        if self.schedule is not None:
            if not 0 <= block_step < len(self.schedule):
                raise ValueError(
                    f"block_step {block_step} outside the schedule of {len(self.schedule)} steps"
                )
            count = self.schedule[block_step]
            if self.remasking in SCHEDULE_THRESHOLD_RULES:
                # SDAR dynamic: all above the threshold if they are at least the scheduled
                # count (an earlier step may have committed more than scheduled: clamp).
                count = min(count, num_masked)
                above = int((confidence[order[:num_masked]] > self.threshold).sum())
                return above if above >= count else count
            if count > num_masked:
                raise ValueError(
                    f"schedule asks for {count} tokens at block step {block_step}, but only "
                    f"{num_masked} positions are masked"
                )
            return count
        ranked = confidence[order[:num_masked]].tolist()
        if self.threshold is not None:
            # >=: Fast-dLLM keeps a confidence equal to the threshold (module docstring).
            return max(1, sum(1 for c in ranked if c >= self.threshold))
        count = 1
        for k, c in enumerate(ranked, start=1):
            if (k + 1) * (1.0 - c) >= self.factor:
                break
            count = k
        return count

    def __call__(
        self,
        logits: torch.Tensor,
        state: torch.Tensor,
        *,
        step: int,
        block_step: int,
        positions: torch.Tensor,
    ) -> tuple[torch.Tensor, MarginalsOutput]:
        """``R``: marginals of `logits` ``[L, V]`` at `step`, then the next state."""
        marginals = self.marginals(logits, step=step, positions=positions)
        new_state = self.apply(
            marginals, state, step=step, block_step=block_step, positions=positions
        )
        return new_state, marginals
