"""How a group of the round's requests becomes one model call, and its output each row's result:
stacked SDPA forwards of one shape (``"forward"``), uncached layout forwards packed varlen
(``"varlen"``), cached forwards packed varlen over one merged cache (``"cached-varlen"``) and
block-start prefills of one shape (``"prefill"``); a request alone runs as it was made. Each
sets every request's ``result`` (the package docstring, "Scope", says why each is exact)."""

from __future__ import annotations

import torch

from .caches import CacheMemo, merged_cache, split_cache
from .layouts import block_diagonal, cached_layout, cached_segments
from .rows import Request


def run_alone(model, memo: CacheMemo, key: tuple, requests: list[Request], rows: list) -> None:
    (request,) = requests
    kind, args, kw = request.payload
    if kind == "call":
        fn, *args = args
        request.result = fn(*args)
    else:
        request.result = getattr(model, "__call__" if kind == "forward" else kind)(*args, **kw)


def run_forward(model, memo: CacheMemo, key: tuple, requests: list[Request], rows: list) -> None:
    ids = torch.cat([r.ids for r in requests])
    kw = dict(requests[0].kwargs)
    if kw["cache"] is not None:
        kw["cache"] = memo.stacked(key, [r.kwargs["cache"] for r in requests], rows)
    _split_rows(model(ids, **kw), requests, rows)


def run_prefill(model, memo: CacheMemo, key: tuple, requests: list[Request], rows: list) -> None:
    logits, cache = model.prefill(torch.cat([r.ids for r in requests]), **requests[0].kwargs)
    start = 0
    for request, n in zip(requests, rows):
        request.result = (logits[start : start + n], split_cache(cache, start, start + n))
        start += n


def run_varlen(model, memo: CacheMemo, key: tuple, requests: list[Request], rows: list) -> None:
    """Uncached forwards with a layout, of any lengths, as one sequence: every batch row of
    every call is a run of segments (its layout), blind to the others (NONE), at its own
    positions, visiting its keys in its own order. The kernel's key tiles never cross a
    segment boundary, so each row gets the logits of its own call (docs/DECODING.md)."""
    ids, pos = _packed_inputs(requests, rows)
    parts = [layout for r, n in zip(requests, rows) for layout in [r.kwargs["layout"]] * n]
    out = model(ids, position_ids=pos, layout=block_diagonal(parts))[0]
    _split_varlen(out, requests, rows)


def run_cached_varlen(
    model, memo: CacheMemo, key: tuple, requests: list[Request], rows: list
) -> None:
    """Cached forwards of any shapes as one sequence over one merged cache: the keys are
    every row's cached segments, then every batch row's fresh rows (its queries); each
    batch row sees its own cache copy and its own rows through its layout's segments (in
    its own key order), nothing of the others. The model reads the merged keys as a
    prefix cache whose real rows are all the query rows (`merged_cache`)."""
    caches = [r.kwargs["cache"] for r in requests]
    plans = [
        cached_segments(cache, r.ids.shape[1], r.kwargs["layout"])
        for r, cache in zip(requests, caches)
    ]
    cached_k, cached_v, lengths, index = memo.merged_keys(key, caches, plans)
    copies = [[j if c.batch_size > 1 else 0 for j in range(n)] for c, n in zip(caches, rows)]
    layout = cached_layout(plans, copies, lengths, index)
    ids, pos = _packed_inputs(requests, rows)
    cache = merged_cache(caches[0], cached_k, cached_v, ids.shape[1])
    _split_varlen(model(ids, position_ids=pos, layout=layout, cache=cache)[0], requests, rows)


RUNS = {
    "alone": run_alone,
    "forward": run_forward,
    "prefill": run_prefill,
    "varlen": run_varlen,
    "cached-varlen": run_cached_varlen,
}


def _packed_inputs(requests: list[Request], rows: list):
    """Every batch row's ids as one ``[1, N]`` sequence, and their positions (each row's own:
    its ``position_ids``, else ``0 .. width - 1``)."""
    ids, pos = [], []
    for request, n in zip(requests, rows):
        x, p = request.ids, request.kwargs["position_ids"]
        p = torch.arange(x.shape[1], device=x.device) if p is None else p.reshape(-1)
        ids.append(x.reshape(-1))
        pos.append(p.to(x.device).repeat(n))
    return torch.cat(ids)[None], torch.cat(pos)


def _split_rows(out, requests: list[Request], rows: list) -> None:
    start = 0
    for request, n in zip(requests, rows):
        request.result = out[start : start + n]
        start += n


def _split_varlen(out, requests: list[Request], rows: list) -> None:
    """A packed call's ``[N, V]`` logits back as each request's ``[rows, width, V]``."""
    start = 0
    for request, n in zip(requests, rows):
        m = request.ids.shape[1]
        request.result = out[start : start + n * m].view(n, m, -1)
        start += n * m
