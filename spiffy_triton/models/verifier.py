"""The verifier of bidirectional dLLMs (`BidirectionalVerifier`: LLaDA's layout, Dream's shifted
logits, the Hugging Face adapter), the decoder's ``spiffy_verifier`` hook; its inputs come from
the one builder (`spiffy_triton.verify_inputs`)."""

from __future__ import annotations

import torch

from ..types import CACHE_MODES, VERIFY_MODES
from ..verify_inputs import verify_inputs


def check_model_has_cache(model, cache: str | None) -> None:
    """Raise when a KV `cache` mode is asked of a model without one (no ``prefill``)."""
    if cache is not None and not hasattr(model, "prefill"):
        raise ValueError(
            f"cache={cache!r} needs a model with a KV cache (prefill); "
            f"{type(model).__name__} has none: use cache=None"
        )


class BidirectionalVerifier:
    """The decoder's verifier (``generate``'s hook, see `spiffy_triton.decoding`) for a
    bidirectional model whose block position ``i`` is read from row ``i - shift``.

    Verification works on the window ``[s - shift, e)``: the block and the ``shift`` rows that
    its first logits are read from. Each draft is a copy of the whole window (the anchor tokens,
    which are committed, then the draft's block), so the rows its logits come from belong to the
    draft, never to the root. With ``shift=0`` this is the LLaDA verification.

    - ``cache=None``, ``verify="batch"``: each draft is another batch row of the whole sequence:
      exact. ``verify="packed"``: drafts packed after the sequence under
      ``SegmentLayout.spiffy``; the context rows see the root, not the draft: near-lossless.
    - ``cache="dual"`` / ``"prefix"``: the model's frozen cache of the context outside the
      window; packed or batch: exact (a draft sees what vanilla's cached forward sees).

    ``model`` needs ``model(ids, position_ids=, layout=, cache=)`` and, for a cache,
    ``model.prefill(ids, block_start=, block_end=, mode=)`` (LLaDA's interface).
    """

    def __init__(self, model, cache: str | None, verify: str | None, *, shift: int = 0):
        if cache is not None and cache not in CACHE_MODES:
            raise ValueError(f"cache must be None, 'prefix' or 'dual', got {cache!r}")
        if verify is not None and verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES} or None, got {verify!r}")
        check_model_has_cache(model, cache)
        if shift not in (0, 1):
            raise ValueError(f"shift must be 0 or 1, got {shift!r}")
        self.model = model
        self.cache = cache
        self.shift = shift
        self.verify = verify or ("batch" if cache is None else "packed")
        self.exact = not (cache is None and self.verify == "packed")
        self.clock = None  # the decoder's phase clock, set by generate
        self.kv = None

    def _lap(self, phase: str) -> None:
        if self.clock is not None:
            self.clock.lap(phase)

    def _window(self, s: int) -> int:
        w = s - self.shift
        if w < 0:
            raise ValueError(
                f"the block starts at {s}: a model with shifted logits needs {self.shift} "
                "token(s) before it (a non-empty prompt)"
            )
        return w

    def prefill(self, x: torch.Tensor, s: int, e: int):
        """Block-start forward of a cached mode: the block's logits ``[L, V]`` (and no hint)."""
        w = self._window(s)
        logits, self.kv = self.model.prefill(x, block_start=w, block_end=e, mode=self.cache)
        self._lap("model")
        return logits[0, w : w + e - s], None

    def __call__(self, x: torch.Tensor, s: int, e: int, drafts: torch.Tensor):
        """Logits of the root block ``[L, V]``, of each draft ``[D, L, V]``, and of the next
        block's positions from the root rows (or None). Inputs from the one builder
        (`spiffy_triton.verify_inputs`)."""
        self._window(s)
        inputs = verify_inputs(x, s, e, drafts, self.cache, self.verify, shift=self.shift)
        self._lap("layout")
        out = inputs.run(self.model, self.kv)
        self._lap("model")
        return inputs.split(out)
