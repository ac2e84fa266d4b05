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

from ..layout import FULL, NONE, SegmentLayout
from ..types import CACHE_MODES, VERIFY_MODES, CacheMode, VerifyMode
from .stats import PhaseClock

__all__ = ["CACHE_MODES", "VERIFY_MODES", "Verifier", "default_verify", "is_exact"]


def default_verify(cache: CacheMode | None) -> VerifyMode:
    """The exact verification mode of a cache setting."""
    return "batch" if cache is None else "packed"


def is_exact(cache: CacheMode | None, verify: VerifyMode) -> bool:
    """Whether a draft's logits equal vanilla's for the same state (section 2, Lossless)."""
    return not (cache is None and verify == "packed")


def prefix_cache_layout(prefix_len: int, real_rows: int, num_drafts: int) -> SegmentLayout:
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
        if self.cache_mode is None:
            return self._uncached(x, s, e, drafts)
        if self.cache_mode == "dual":
            return self._dual(x, s, e, drafts)
        return self._prefix(x, s, e, drafts)

    def _forward(self, ids, pos, layout, cache=None) -> torch.Tensor:
        self.clock.lap("layout")
        out = self.model(ids, position_ids=pos, layout=layout, cache=cache)
        self.clock.lap("model")
        return out

    def _uncached(self, x, s, e, drafts):
        t, length, d, device = x.shape[1], e - s, drafts.shape[0], x.device
        packed = self.verify == "packed" and d > 0
        # Without a cache, every row sees the whole sequence when no draft is packed behind the
        # root (a root-only forward, or drafts as batch rows, the exact default): the model's
        # plain attention (SDPA), as upstream's vanilla runs, not the graph-masked path (issue
        # #21). SDPA is batch-invariant (a row's logits do not depend on the other batch rows,
        # checked in float32 and bf16), so batch-row drafts stay exact.
        layout = SegmentLayout.spiffy(s, length, t - e, d) if packed else None
        if packed:
            ids = torch.cat([x[0], drafts.reshape(-1)])[None]
            pos = torch.cat([torch.arange(t), torch.arange(s, e).repeat(d)]).to(device)
        else:
            ids = x.repeat(1 + d, 1)
            ids[1:, s:e] = drafts
            pos = torch.arange(t, device=device)
        out = self._forward(ids, pos, layout)
        if packed:
            root, draft_logits = out[0, s:e], out[0, t:].view(d, length, out.shape[-1])
        else:
            root, draft_logits = out[0, s:e], out[1:, s:e]
        return root, draft_logits, out[0, e : min(t, e + length)]

    def _dual(self, x, s, e, drafts):
        t, length, d, device = x.shape[1], e - s, drafts.shape[0], x.device
        packed = self.verify == "packed"
        # Cached modes keep the layout even without drafts: the root-only forward then does the
        # arithmetic of a packed draft row (same kernel, same key order), so vanilla's logits
        # equal Spiffy's draft logits bit for bit (the plain SDPA path differs: up to 0.125 in
        # bf16 logits on the bundled model; docs/PERFORMANCE.md).
        layout = SegmentLayout.spiffy(s, length, t - e, d if packed else 0, cached=True)
        if packed:
            ids = torch.cat([x[0, s:e], drafts.reshape(-1)])[None]
            pos = torch.arange(s, e, device=device).repeat(1 + d)
        else:
            ids = torch.cat([x[:, s:e], drafts])
            pos = torch.arange(s, e, device=device)
        out = self._forward(ids, pos, layout, self.kv)
        if packed:
            return out[0, :length], out[0, length:].view(d, length, out.shape[-1]), None
        return out[0], out[1:], None

    def _prefix(self, x, s, e, drafts):
        # Real rows are the block and everything after it.
        t, length, d, device = x.shape[1], e - s, drafts.shape[0], x.device
        real = t - s
        suffix = x[0, e:]
        if self.verify == "packed":
            layout = prefix_cache_layout(s, real, d)
            rows = [x[0, s:]] + [torch.cat([draft, suffix]) for draft in drafts]
            ids = torch.cat(rows)[None]
            pos = torch.arange(s, t, device=device).repeat(1 + d)
        else:
            layout = prefix_cache_layout(s, real, 0)
            ids = x[:, s:].repeat(1 + d, 1)
            ids[1:, :length] = drafts
            pos = torch.arange(s, t, device=device)
        out = self._forward(ids, pos, layout, self.kv)
        hint = out[0, length : min(real, 2 * length)]
        if self.verify == "packed":
            per_row = out[0].view(1 + d, real, -1)
            return per_row[0, :length], per_row[1:, :length], hint
        return out[0, :length], out[1:, :length], hint
