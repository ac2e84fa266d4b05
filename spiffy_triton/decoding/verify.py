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

from dataclasses import dataclass

import torch

from ..layout import FULL, NONE, SegmentLayout
from .stats import PhaseClock

CACHE_MODES = (None, "prefix", "dual")
VERIFY_MODES = ("packed", "batch")


def default_verify(cache: str | None) -> str:
    """The exact verification mode of a cache setting."""
    return "batch" if cache is None else "packed"


def is_exact(cache: str | None, verify: str) -> bool:
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


@dataclass
class VerifyInputs:
    """One verify forward's inputs and how to read its logits (`verify_inputs`).

    ``input_ids`` ``[B, Mq]`` (the query rows), ``position_ids`` ``[Mq]``, ``layout`` (the
    `SegmentLayout` of the attention; `layout.to_dense()` or `additive_mask` for a model
    without the kernel); ``split(logits [B, Mq, V])`` gives ``(root [L, V], drafts [D, L, V],
    hint [L', V] or None)``: the root block's logits, each draft's, and the next block's rows
    from the root's forward (uncached and prefix modes).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    layout: SegmentLayout
    cache: str | None
    verify: str
    start: int
    end: int
    num_drafts: int
    total_length: int

    def split(self, out: torch.Tensor):
        s, e, d, t = self.start, self.end, self.num_drafts, self.total_length
        length, packed = e - s, self.verify == "packed"
        if self.cache is None:
            if packed:
                root, drafts = out[0, s:e], out[0, t:].view(d, length, out.shape[-1])
            else:
                root, drafts = out[0, s:e], out[1:, s:e]
            return root, drafts, out[0, e : min(t, e + length)]
        if self.cache == "dual":
            if packed:
                return out[0, :length], out[0, length:].view(d, length, out.shape[-1]), None
            return out[0], out[1:], None
        real = t - s
        hint = out[0, length : min(real, 2 * length)]
        if packed:
            per_row = out[0].view(1 + d, real, -1)
            return per_row[0, :length], per_row[1:, :length], hint
        return out[0, :length], out[1:, :length], hint


def verify_inputs(
    x: torch.Tensor, s: int, e: int, drafts: torch.Tensor, cache: str | None, verify: str
) -> VerifyInputs:
    """The verify forward of the block ``[s, e)`` of ``x [1, T]`` and ``drafts [D, L]``: the
    one builder of verify inputs (the decoder's `Verifier`, the step API). Without cache the
    query rows are the whole sequence (packed: the drafts' rows after it; batch: one row per
    draft); with a cache the query rows start at the block (dual: the block; prefix: the block
    and the suffix, each packed draft with its own copy of the suffix)."""
    t, length, d, device = x.shape[1], e - s, drafts.shape[0], x.device
    packed = verify == "packed"
    if cache is None:
        layout = SegmentLayout.spiffy(s, length, t - e, d if packed else 0)
        if packed:
            ids = torch.cat([x[0], drafts.reshape(-1)])[None]
            pos = torch.cat([torch.arange(t), torch.arange(s, e).repeat(d)]).to(device)
        else:
            ids = x.repeat(1 + d, 1)
            ids[1:, s:e] = drafts
            pos = torch.arange(t, device=device)
    elif cache == "dual":
        layout = SegmentLayout.spiffy(s, length, t - e, d if packed else 0, cached=True)
        if packed:
            ids = torch.cat([x[0, s:e], drafts.reshape(-1)])[None]
            pos = torch.arange(s, e, device=device).repeat(1 + d)
        else:
            ids = torch.cat([x[:, s:e], drafts])
            pos = torch.arange(s, e, device=device)
    else:
        real = t - s
        suffix = x[0, e:]
        if packed:
            layout = prefix_cache_layout(s, real, d)
            rows = [x[0, s:]] + [torch.cat([draft, suffix]) for draft in drafts]
            ids = torch.cat(rows)[None]
            pos = torch.arange(s, t, device=device).repeat(1 + d)
        else:
            layout = prefix_cache_layout(s, real, 0)
            ids = x[:, s:].repeat(1 + d, 1)
            ids[1:, :length] = drafts
            pos = torch.arange(s, t, device=device)
    return VerifyInputs(ids, pos, layout, cache, verify, s, e, d, t)


def additive_mask(layout: SegmentLayout, dtype: torch.dtype, device=None) -> torch.Tensor:
    """The layout as an additive ``[1, 1, Mq, Mk]`` mask for attention without the kernel
    (eager / SDPA): 0 where a query row sees a key, the dtype's minimum elsewhere."""
    visible = layout.to_dense(device)
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min)[None, None]


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
        cache = None if self.cache_mode is None else self.kv
        out = self.model(
            inputs.input_ids, position_ids=inputs.position_ids, layout=inputs.layout, cache=cache
        )
        self.clock.lap("model")
        return inputs.split(out)
