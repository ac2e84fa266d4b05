"""Verify inputs: the one builder of a verify forward's ids, position ids and `SegmentLayout`
for bidirectional models (LLaDA, Dream, the Hugging Face adapter), and how to read its logits.

Used by the decoder's `decoding.verify.Verifier`, the models' `BidirectionalVerifier`, SDAR's
`BlockCausalVerifier` (its own uncached layout, `uncached_layout=`), the step API
(`decoding.steps`), and the cost model's `verify_shape` (the shapes of its output on ``meta``
tensors). Imports only `spiffy_triton.layout` (layer 0), so models and decoding can both use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .layout import FULL, NONE, SegmentLayout

__all__ = ["VerifyInputs", "additive_mask", "prefix_cache_layout", "verify_inputs"]


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
    shift: int = 0
    full_attention: bool = False  # every query row sees every key (`attention_layout`)

    @property
    def attention_layout(self) -> SegmentLayout | None:
        """What the model's attention gets: None (its plain full attention, SDPA, as upstream's
        vanilla runs) without a cache when no draft is packed behind the root, since every row
        then sees the whole sequence (issue #21: a root-only forward through the graph path
        was 1.3-1.8x slower than LLaDA's `generate`). SDPA is batch-invariant, so drafts as
        batch rows stay exact. Cached modes keep the layout even without drafts: a root-only
        forward then does a packed draft row's arithmetic (same kernel, same key order), so
        vanilla's logits equal Spiffy's draft logits bit for bit (docs/PERFORMANCE.md)."""
        return None if self.full_attention else self.layout

    def run(self, model, kv=None) -> torch.Tensor:
        """``model``'s forward on these inputs (``kv``: the cache of a cached mode; a model
        without a cache is not handed one)."""
        cache = {} if self.cache is None else {"cache": kv}
        return model(
            self.input_ids, position_ids=self.position_ids, layout=self.attention_layout, **cache
        )

    def split(self, out: torch.Tensor):
        s, e, d, t, shift = self.start, self.end, self.num_drafts, self.total_length, self.shift
        w, length, packed = s - shift, e - s, self.verify == "packed"
        n = e - w  # window rows: the block and the rows its first logits are read from
        if self.cache is None:
            root = out[0, w : w + length]
            if packed:
                drafts = out[0, t:].view(d, n, out.shape[-1])[:, :length]
            else:
                drafts = out[1:, w : w + length]
            return root, drafts, out[0, e - shift : min(t, e - shift + length)]
        real = n if self.cache == "dual" else t - w
        per_copy = out.reshape(1 + d, real, out.shape[-1])
        hint = None if self.cache == "dual" else per_copy[0, length : min(real, 2 * length)]
        return per_copy[0, :length], per_copy[1:, :length], hint


def verify_inputs(
    x: torch.Tensor,
    s: int,
    e: int,
    drafts: torch.Tensor,
    cache: str | None,
    verify: str,
    *,
    shift: int = 0,
    uncached_layout: Callable[[int], SegmentLayout] | None = None,
) -> VerifyInputs:
    """The verify forward of the block ``[s, e)`` of ``x [1, T]`` and ``drafts [D, L]``: the
    one builder of verify inputs of bidirectional models (the decoder's `Verifier`, Dream's
    and the adapter's `BidirectionalVerifier`, the step API).

    The forward works on the window ``[s - shift, e)``: the block and the `shift` rows its
    first logits are read from (models that read position ``i`` from row ``i - 1``, Dream);
    each draft is a copy of the window (the committed anchor tokens, then the draft). Without
    cache the query rows are the whole sequence (packed: the copies' rows after it; batch: one
    row per draft); with a cache they start at the window (dual: the window; prefix: the
    window and the suffix, each packed copy with its own suffix).

    ``uncached_layout(num_packed_drafts)``: the layout without cache where the model's is not
    the bidirectional `SegmentLayout.spiffy` (SDAR: block-causal chunks of the context, with
    ``x`` cut at the block's end, since nothing before the block sees the masked future)."""
    t, d, device = x.shape[1], drafts.shape[0], x.device
    w = s - shift
    n = e - w
    copies = torch.cat([x[0, w:s].expand(d, shift), drafts], dim=1) if shift else drafts
    packed = verify == "packed"
    full = cache is None and not (packed and d > 0) and uncached_layout is None
    if cache is None:
        if uncached_layout is None:
            layout = SegmentLayout.spiffy(w, n, t - e, d if packed else 0)
        else:
            layout = uncached_layout(d if packed else 0)
        if packed:
            ids = torch.cat([x[0], copies.reshape(-1)])[None]
            pos = torch.cat([torch.arange(t), torch.arange(w, e).repeat(d)]).to(device)
        else:
            ids = x.repeat(1 + d, 1)
            ids[1:, w:e] = copies
            pos = torch.arange(t, device=device)
    elif cache == "dual":
        layout = SegmentLayout.spiffy(w, n, t - e, d if packed else 0, cached=True)
        if packed:
            ids = torch.cat([x[0, w:e], copies.reshape(-1)])[None]
            pos = torch.arange(w, e, device=device).repeat(1 + d)
        else:
            ids = torch.cat([x[:, w:e], copies])
            pos = torch.arange(w, e, device=device)
    else:
        real = t - w
        if packed:
            layout = prefix_cache_layout(w, real, d)
            suffix = x[0, e:].expand(d, t - e)
            ids = torch.cat([x[0, w:], torch.cat([copies, suffix], dim=1).reshape(-1)])[None]
            pos = torch.arange(w, t, device=device).repeat(1 + d)
        else:
            layout = prefix_cache_layout(w, real, 0)
            ids = x[:, w:].repeat(1 + d, 1)
            ids[1:, :n] = copies
            pos = torch.arange(w, t, device=device)
    return VerifyInputs(ids, pos, layout, cache, verify, s, e, d, t, shift, full)


def additive_mask(layout: SegmentLayout, dtype: torch.dtype, device=None) -> torch.Tensor:
    """The layout as an additive ``[1, 1, Mq, Mk]`` mask for attention without the kernel
    (eager / SDPA): 0 where a query row sees a key, the dtype's minimum elsewhere."""
    visible = layout.to_dense(device)
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min)[None, None]
