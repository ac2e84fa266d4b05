"""The tile schedule of a `SegmentLayout` (`SegmentLayout.schedule`): per query tile, the key
tiles it visits and which of them need element masking, computed once per
``(layout, block_m, block_n, device)`` and cached, so every layer of a model reuses it.

Key tiles never cross a key segment boundary: each key segment is cut into tiles of ``block_n``
keys starting at its own first key, so the tiles a draft's rows visit do not depend on which
other segments are packed beside it. The ``ENTRY_*`` columns are the kernel's contract
(`kernels/graph_attention.py` reads them through `spiffy_triton.layout`, which re-exports them).
"""

from __future__ import annotations

import math
import numbers
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .layout_checks import CAUSAL, FULL, NONE

# Columns of `TileSchedule.entries` (one row per visited key tile).
ENTRY_K_START = 0  # first key row of the tile
ENTRY_K_END = 1  # one past the last valid key row (tiles stop at their segment's end)
ENTRY_K_SEGMENT = 2  # key segment index
ENTRY_K_SEGMENT_START = 3  # first key row of that segment (for CAUSAL offsets)
ENTRY_MASKED = 4  # 1 if some (row, key) of the tile needs an element mask
ENTRY_FIELDS = 5

_SCHEDULE_CACHE_SIZE = 256


@dataclass(frozen=True)
class TileSchedule:
    """Which key tiles each query tile visits (CSR), for one ``(block_m, block_n)``.

    ``tile_offsets`` (int32 ``[num_q_tiles + 1]``): query tile ``t`` visits entries
    ``tile_offsets[t] : tile_offsets[t + 1]``, in the order a row must visit them.
    ``entries`` (int32 ``[num_entries, ENTRY_FIELDS]``): see the ``ENTRY_*`` columns.
    ``row_segment`` / ``row_offset`` (int32 ``[Mq]``): each query row's segment and its
    offset inside it (for element masks). ``visibility`` (int32 ``[Sq * Sk]``, row-major).
    """

    block_m: int
    block_n: int
    num_q_tiles: int
    tile_offsets: torch.Tensor
    entries: torch.Tensor
    row_segment: torch.Tensor
    row_offset: torch.Tensor
    visibility: torch.Tensor

    @property
    def num_entries(self) -> int:
        return int(self.entries.shape[0])

    def to(self, device: torch.device | str) -> TileSchedule:
        return TileSchedule(
            self.block_m,
            self.block_n,
            self.num_q_tiles,
            self.tile_offsets.to(device),
            self.entries.to(device),
            self.row_segment.to(device),
            self.row_offset.to(device),
            self.visibility.to(device),
        )


_schedule_cache: OrderedDict = OrderedDict()
_schedule_lock = threading.Lock()


def layout_schedule(layout, block_m: int, block_n: int, device=None) -> TileSchedule:
    """`layout`'s tile schedule (`SegmentLayout.schedule`) for query tiles of `block_m` rows
    and key tiles of `block_n`.

    Cached per ``(layout, block_m, block_n, device)``: every layer of a forward pass (and
    every equal layout built later) reuses the same small int32 tensors.
    """
    for name, value in (("block_m", block_m), ("block_n", block_n)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    device = torch.device("cpu" if device is None else device)
    cache_key = (layout._key, int(block_m), int(block_n), str(device))
    with _schedule_lock:
        cached = _schedule_cache.get(cache_key)
        if cached is not None:
            _schedule_cache.move_to_end(cache_key)
            return cached
    cpu_key = (layout._key, int(block_m), int(block_n), "cpu")
    with _schedule_lock:
        cpu_schedule = _schedule_cache.get(cpu_key)
    if cpu_schedule is None:
        cpu_schedule = build_schedule(layout, int(block_m), int(block_n))
    result = cpu_schedule if device.type == "cpu" else cpu_schedule.to(device)
    with _schedule_lock:
        _schedule_cache[cpu_key] = cpu_schedule
        _schedule_cache[cache_key] = result
        while len(_schedule_cache) > _SCHEDULE_CACHE_SIZE:
            _schedule_cache.popitem(last=False)
    return result


def _key_tiles(layout, block_n: int) -> list[tuple[int, int, int]]:
    """(start, end, segment) of every key tile, tiles aligned to segment starts."""
    tiles = []
    for seg, (start, length) in enumerate(zip(layout.k_starts, layout.k_lengths)):
        for tile_start in range(start, start + length, block_n):
            tiles.append((tile_start, min(tile_start + block_n, start + length), seg))
    return tiles


def build_schedule(layout, block_m: int, block_n: int) -> TileSchedule:
    """`layout`'s tile schedule, computed (uncached; `layout_schedule` caches it)."""
    vis = layout.visibility.tolist()
    key_tiles = _key_tiles(layout, block_n)
    tiles_of_segment: dict[int, list[int]] = {}
    for index, (_, _, seg) in enumerate(key_tiles):
        tiles_of_segment.setdefault(seg, []).append(index)
    # Visiting order: by key segment rank, then memory order.
    rank = {index: (layout.key_order[seg], index) for index, (_, _, seg) in enumerate(key_tiles)}

    num_q_tiles = math.ceil(layout.num_q_rows / block_m)
    offsets = [0]
    entries: list[tuple[int, int, int, int, int]] = []
    q_ends = [s + n for s, n in zip(layout.q_starts, layout.q_lengths)]
    first_segment = 0
    for t in range(num_q_tiles):
        row_lo, row_hi = t * block_m, min((t + 1) * block_m, layout.num_q_rows)
        while q_ends[first_segment] <= row_lo:
            first_segment += 1
        # For each key tile: does any row of the query tile see one of its keys, and in
        # how many of the tile's query segments does every row see every key?
        any_visible: set[int] = set()
        all_visible_count: dict[int, int] = {}
        num_segments = 0
        seg = first_segment
        while seg < layout.num_q_segments and layout.q_starts[seg] < row_hi:
            if layout.q_lengths[seg]:
                num_segments += 1
                a_lo = max(row_lo, layout.q_starts[seg]) - layout.q_starts[seg]
                a_hi = min(row_hi, q_ends[seg]) - layout.q_starts[seg] - 1
                for k_seg, relation in enumerate(vis[seg]):
                    if relation == NONE:
                        continue
                    for index in tiles_of_segment.get(k_seg, ()):
                        k_lo, k_hi, _ = key_tiles[index]
                        b_lo = k_lo - layout.k_starts[k_seg]
                        b_hi = k_hi - layout.k_starts[k_seg] - 1
                        if relation == CAUSAL and b_lo > a_hi:
                            continue
                        any_visible.add(index)
                        if relation == FULL or b_hi <= a_lo:
                            all_visible_count[index] = all_visible_count.get(index, 0) + 1
            seg += 1
        for index in sorted(any_visible, key=rank.__getitem__):
            k_lo, k_hi, k_seg = key_tiles[index]
            unmasked = all_visible_count.get(index, 0) == num_segments and k_hi - k_lo == block_n
            entries.append((k_lo, k_hi, k_seg, layout.k_starts[k_seg], int(not unmasked)))
        offsets.append(len(entries))

    q_seg, q_off = layout.row_segments()
    return TileSchedule(
        block_m=block_m,
        block_n=block_n,
        num_q_tiles=num_q_tiles,
        tile_offsets=torch.tensor(offsets, dtype=torch.int32),
        entries=torch.tensor(entries, dtype=torch.int32).reshape(-1, ENTRY_FIELDS),
        row_segment=q_seg.to(torch.int32),
        row_offset=q_off.to(torch.int32),
        visibility=layout.visibility.to(torch.int32).flatten().contiguous(),
    )
