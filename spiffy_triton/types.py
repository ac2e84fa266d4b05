"""Types shared across floors (no project imports): the kernels' result type, the string
choices of the public API as `Literal` aliases (each defined once here; the tuples the code
validates against are read off them), and the `Protocol`s of the seams between the decoder
and what it drives (docs/DESIGN.md §7).

Seams: `DiffusionModel` (what `generate` needs of a model), `VerifyForward` (the one forward
that evaluates the root and its drafts: `spiffy_triton.decoding.verify.Verifier`, or a model's
own through ``model.spiffy_verifier(cache, verify)``), and the draft source of SimSD
(`spiffy_triton.decoding.simsd.draft.DraftSource`, beside the `Proposal` it returns).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Protocol, get_args, runtime_checkable

import torch

# --- the string choices ------------------------------------------------------------------

Backend = Literal["auto", "triton", "torch"]
"""Kernel or twin per call (`spiffy_triton.dispatch`)."""
CacheMode = Literal["prefix", "dual"]
"""A KV cache's mode; ``generate(cache=)`` takes a `CacheMode` or None (no cache)."""
VerifyMode = Literal["packed", "batch"]
"""How a verify forward holds the drafts (`spiffy_triton.decoding.verify`)."""
Method = Literal["vanilla", "spiffy", "simsd", "simsd-exact"]
"""``generate(method=)``: vanilla / Spiffy (by `graph`), SimSD and its exact variant."""
LLaDARemasking = Literal["low_confidence", "random"]
DreamRemasking = Literal["maskgit_plus", "topk_margin", "entropy"]
SDARRemasking = Literal["low_confidence_static", "low_confidence_dynamic"]
Remasking = Literal[LLaDARemasking, DreamRemasking, SDARRemasking]
"""``generate(remasking=)``: the transition rule's kind (`spiffy_triton.decoding.rules`)."""

BACKENDS: tuple[Backend, ...] = get_args(Backend)
CACHE_MODES: tuple[CacheMode, ...] = get_args(CacheMode)
VERIFY_MODES: tuple[VerifyMode, ...] = get_args(VerifyMode)
METHODS: tuple[Method, ...] = get_args(Method)
REMASKINGS: tuple[Remasking, ...] = get_args(Remasking)


# --- results ----------------------------------------------------------------------------


class MarginalsOutput(NamedTuple):
    """Per-row summary of a logits row, as returned by `spiffy_triton.marginals`.

    token: int64 [N] chosen token (argmax at T = 0, Gumbel-max of logits / T at T > 0).
    prob: float32 [N] softmax probability (T = 1) of `token`: LLaDA's confidence.
    topk_tokens: int64 [N, k] highest-logit tokens, ties to the lowest vocab id.
    topk_probs: float32 [N, k] their softmax probabilities (T = 1).
    lse: float32 [N] log-sum-exp of the row (T = 1).
    entropy: float32 [N] entropy of softmax(row) in nats.
    """

    token: torch.Tensor
    prob: torch.Tensor
    topk_tokens: torch.Tensor
    topk_probs: torch.Tensor
    lse: torch.Tensor
    entropy: torch.Tensor


# --- seams ------------------------------------------------------------------------------


class ModelConfig(Protocol):
    """What the decoder reads of a model's configuration."""

    mask_token_id: int
    max_sequence_length: int


@runtime_checkable
class DiffusionModel(Protocol):
    """What `generate` needs of a model (docs/ARCHITECTURE.md, "Model"): logits of query rows
    under an optional layout and cache, and a block-start forward that returns the cache.
    Models with their own verification also have ``spiffy_verifier(cache, verify) ->
    VerifyForward`` (Dream, SDAR, `HFDiffusionModel`)."""

    config: ModelConfig

    def __call__(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        layout: Any = None,
        cache: Any = None,
    ) -> torch.Tensor: ...

    def prefill(
        self, input_ids: torch.Tensor, *, block_start: int, block_end: int, mode: CacheMode
    ) -> tuple[torch.Tensor, Any]: ...


@runtime_checkable
class VerifyForward(Protocol):
    """The one forward that evaluates the root block and its drafts, timed by ``clock``."""

    clock: Any

    def prefill(self, x: torch.Tensor, s: int, e: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Block-start forward of a cached mode: root logits ``[L, V]`` (and, where the model
        computes them, the next block's ``[L', V]``)."""
        ...

    def __call__(
        self, x: torch.Tensor, s: int, e: int, drafts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Root logits ``[L, V]``, each draft's ``[D, L, V]``, and the next block's
        positions' from the root rows (``[L', V]``, or None when not computed)."""
        ...
