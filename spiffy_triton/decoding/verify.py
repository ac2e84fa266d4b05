"""The verify forward: one model call that evaluates the root block and its drafts.

Verification modes (``verify=``), and when they are exact (docs/DECODING.md):

- ``"packed"``: one sequence of batch 1, drafts packed behind the real rows under a
  `SegmentLayout`. With ``cache="dual"`` a draft sees the frozen prefix and suffix and itself,
  exactly what vanilla's cached forward sees: exact. With ``cache="prefix"`` each draft carries
  its own copy of the suffix (the suffix attends to the block, so it must see the draft): exact.
  With ``cache=None`` the context rows are shared and see the root, not the draft: near-lossless.
- ``"batch"``: each draft is another batch row holding the whole query sequence: exact for
  every cache mode (costs ``(1 + D)`` full rows).

Models with their own verification (Dream's shifted logits, SDAR's block-causal layout) give
the decoder a verifier of the same interface through ``model.spiffy_verifier(cache, verify)``.
"""

from __future__ import annotations

import torch

from ..types import CACHE_MODES, VERIFY_MODES, CacheMode, VerifyMode
from ..verify_inputs import (  # noqa: F401  (re-exported: decoding's names)
    VerifyInputs,
    additive_mask,
    prefix_cache_layout,
    verify_inputs,
)
from .stats import PhaseClock

__all__ = ["CACHE_MODES", "VERIFY_MODES", "Verifier", "default_verify", "is_exact"]


def default_verify(cache: CacheMode | None) -> VerifyMode:
    """The exact verification mode of a cache setting."""
    return "batch" if cache is None else "packed"


def is_exact(cache: CacheMode | None, verify: VerifyMode) -> bool:
    """Whether a draft's logits equal vanilla's for the same state (section 2, Lossless)."""
    return not (cache is None and verify == "packed")


class Verifier:
    """Builds and runs the one forward that evaluates the root and its drafts (LLaDA-style
    models: the real rows see the whole sequence or the frozen cache)."""

    def __init__(self, model, cache_mode: str | None, verify: str, clock: PhaseClock):
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
        inputs = verify_inputs(x, s, e, drafts, self.cache_mode, self.verify)
        self.clock.lap("layout")
        out = inputs.run(self.model, self.kv)
        self.clock.lap("model")
        return inputs.split(out)
