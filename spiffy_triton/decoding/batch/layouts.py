"""Varlen packing: the layouts of several calls as one `SegmentLayout`, each batch row a run of
segments blind to the others (NONE), visiting its keys in its own order. Exact because the
attention's key tiles never cross a segment boundary (spiffy_triton/layout.py)."""

from __future__ import annotations

from ...layout import NONE, SegmentLayout


def key_ranks(layout) -> list[int]:
    """Each key segment's rank in `layout`'s key order (ties broken by segment index)."""
    n = len(layout.k_lengths)
    order = sorted(range(n), key=lambda seg: (layout.key_order[seg], seg))
    ranks = [0] * n
    for r, seg in enumerate(order):
        ranks[seg] = r
    return ranks


def place_layouts(k_lengths: list, placements: list) -> SegmentLayout:
    """One layout over the key segments `k_lengths`: each placement ``(layout, index)`` adds
    the layout's query segments (in order), seeing the merged segment ``index[seg]`` as it saw
    its own ``seg`` and nothing else, with its key order kept (as ranks)."""
    num_k = len(k_lengths)
    q_lengths, visibility, ranks = [], [], [0] * num_k
    for layout, index in placements:
        for seg, r in enumerate(key_ranks(layout)):
            ranks[index[seg]] = r
        for row in layout.visibility.tolist():
            full = [NONE] * num_k
            for seg, v in enumerate(row):
                full[index[seg]] = v
            visibility.append(full)
        q_lengths += layout.q_lengths
    return SegmentLayout(q_lengths, k_lengths, visibility, key_order=ranks)


def block_diagonal(layouts: list) -> SegmentLayout:
    """The layouts side by side, each blind to the others: query and key segments in order,
    visibility block-diagonal, each layout's key order kept (as distinct ranks)."""
    k_lengths, placements = [], []
    for layout in layouts:
        n = len(layout.k_lengths)
        placements.append((layout, {seg: len(k_lengths) + seg for seg in range(n)}))
        k_lengths += layout.k_lengths
    return place_layouts(k_lengths, placements)


def cached_layout(plans: list, copies: list, cached_lengths: list, cached_index: dict):
    """The layout of cached forwards packed over one merged cache: the keys are every row's
    cached segments (`cached_lengths`, found by ``cached_index[(row, cache copy, segment)]``),
    then every batch row's fresh segments; `plans` holds each call's ``(layout, parts)``
    (`cached_segments`), `copies` each of its batch rows' cache copy."""
    k_lengths, fresh = list(cached_lengths), []
    placements = []  # per batch row: its layout, and where each of its key segments went
    for i, ((layout, parts), row_copies) in enumerate(zip(plans, copies)):
        for copy in row_copies:
            index = {}
            for seg, part in enumerate(parts):
                if part in ("real", "extra"):
                    index[seg] = len(cached_lengths) + len(fresh)
                    fresh.append(layout.k_lengths[seg])
                else:
                    index[seg] = cached_index[(i, copy, seg)]
            placements.append((layout, index))
    return place_layouts(k_lengths + fresh, placements)


def cached_segments(cache, num_q: int, layout):
    """``(layout, part of each key segment)`` of a cached forward with `num_q` query rows (its
    layout, or the model's default one): a key segment lies in the cached ``"prefix"``, the
    fresh ``"real"`` rows, the cached ``"suffix"`` or the fresh ``"extra"`` rows (the key order
    of the cached forward's contract). None when a segment straddles two of them (the forward
    then runs in a shape group, never cut into other tiles)."""
    from ...models.llada import default_cached_layout

    real = cache.real_rows
    if num_q < real:
        return None
    if layout is None:
        try:
            layout = default_cached_layout(cache, num_q - real)
        except ValueError:
            return None
    bounds = [
        ("prefix", cache.prefix_len),
        ("real", real),
        ("suffix", cache.suffix_len),
        ("extra", num_q - real),
    ]
    if layout.num_q_rows != num_q or layout.num_k_rows != sum(n for _, n in bounds):
        return None
    parts, part, used = [], 0, 0
    for n in layout.k_lengths:
        while part < len(bounds) and used == bounds[part][1] and n > 0:
            part, used = part + 1, 0
        if part == len(bounds) or used + n > bounds[part][1]:
            return None
        parts.append(bounds[part][0])
        used += n
    return layout, parts
