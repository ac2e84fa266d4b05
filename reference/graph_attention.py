"""PyTorch twin of `spiffy_triton.kernels.graph_attention`: attention under a `SegmentLayout`.

Computed in float32 (float64 for float64 inputs) from the layout's dense mask. Each query
segment is computed on its own, over the key segments it sees gathered in the layout's visiting
order, so a segment's output depends only on its own rows and the keys it sees: a draft gives
bitwise the same result alone as packed beside other drafts, and in the Spiffy layout the same
as the root row would give for the same tokens (same shapes, same operands, same BLAS call).
"""

from __future__ import annotations

import torch

from spiffy_triton.layout import CAUSAL, NONE, SegmentLayout, validate_attention_inputs

__all__ = ["graph_attention"]


def _key_columns(layout: SegmentLayout, q_segment: int) -> list[int]:
    columns: list[int] = []
    for k_segment in layout.visible_key_segments(q_segment):
        start = layout.k_starts[k_segment]
        columns.extend(range(start, start + layout.k_lengths[k_segment]))
    return columns


def graph_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: SegmentLayout,
    *,
    scale: float | None = None,
    return_lse: bool = False,
):
    """Softmax attention of ``q [B, Hq, Mq, d]`` over ``k, v [B, Hkv, Mk, d]`` under `layout`.

    Query head ``h`` reads key/value head ``h // (Hq // Hkv)``. ``scale`` defaults to
    ``1 / sqrt(d)``. Returns ``o [B, Hq, Mq, d]`` in q's dtype, and with ``return_lse`` also
    ``lse [B, Hq, Mq]`` float32 (natural log of the softmax denominator, scaled scores).
    Rows that see no key give zeros and ``lse = -inf``.
    """
    scale = validate_attention_inputs(q, k, v, layout, scale, return_lse)
    compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    batch, q_heads, q_rows, head_dim = q.shape
    kv_heads = k.shape[1]
    group = q_heads // kv_heads
    # [B, Hkv, g, Mq, d]: query head h = kv_head * g + j
    qc = q.to(compute_dtype).reshape(batch, kv_heads, group, q_rows, head_dim)
    kc = k.to(compute_dtype).unsqueeze(2)
    vc = v.to(compute_dtype).unsqueeze(2)
    out = torch.zeros(
        batch, kv_heads, group, q_rows, head_dim, dtype=compute_dtype, device=q.device
    )
    lse = torch.full(
        (batch, kv_heads, group, q_rows), float("-inf"), dtype=compute_dtype, device=q.device
    )
    dense = None
    for segment, (start, length) in enumerate(zip(layout.q_starts, layout.q_lengths)):
        columns = _key_columns(layout, segment)
        if length == 0 or not columns:
            continue
        rows = slice(start, start + length)
        index = torch.tensor(columns, dtype=torch.long, device=q.device)
        keys = kc.index_select(3, index)
        values = vc.index_select(3, index)
        scores = torch.matmul(qc[:, :, :, rows], keys.transpose(-1, -2)) * scale
        relations = {int(x) for x in layout.visibility[segment].tolist()} - {NONE}
        if CAUSAL in relations:
            if dense is None:
                dense = layout.to_dense(q.device)
            visible = dense[rows].index_select(1, index)
            scores = scores.masked_fill(~visible, float("-inf"))
        row_lse = torch.logsumexp(scores, dim=-1)
        seen = torch.isfinite(row_lse)
        probs = torch.exp(scores - torch.where(seen, row_lse, 0.0).unsqueeze(-1))
        out[:, :, :, rows] = torch.matmul(probs, values) * seen.unsqueeze(-1)
        lse[:, :, :, rows] = row_lse
    out = out.reshape(batch, q_heads, q_rows, head_dim).to(q.dtype)
    if return_lse:
        return out, lse.reshape(batch, q_heads, q_rows).to(torch.float32)
    return out
