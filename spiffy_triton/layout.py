"""Segment layouts: which query rows see which keys, as a few segments and a tiny matrix.

Query rows and key rows are each cut into contiguous segments. ``visibility[i, j]`` says how
query segment ``i`` sees key segment ``j``: `NONE` (not at all), `FULL` (every key), or `CAUSAL`
(key offset <= query offset, both counted from their segment starts). Building a layout is
O(segments) on the host; the dense ``[Mq, Mk]`` mask is only a view (`SegmentLayout.to_dense`).

Key tiles never cross a key segment boundary: each key segment is cut into tiles of ``block_n``
keys starting at its own first key. So the tiles a draft's rows visit, and the values inside
them, do not depend on which other segments are packed beside it. ``key_order`` fixes the
order in which a query row visits key segments (default: their order in memory). The Spiffy
layout visits a draft's own keys in the slot of the root block it replaces, so a draft row
does exactly the arithmetic that the root row does for the same tokens.

`SegmentLayout.schedule` turns a layout into the kernel's tile schedule (which key tiles each
query tile visits, and which of them need element masking), computed once per
``(block_m, block_n, device)`` and cached, so every layer of a model reuses it.

`validate_attention_inputs` is the one input check shared by the Triton kernel and its
PyTorch reference, so both raise the same errors.

No project imports: this module sits at the bottom of the module map.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

NONE = 0
FULL = 1
CAUSAL = 2
VISIBILITY_NAMES = {NONE: "NONE", FULL: "FULL", CAUSAL: "CAUSAL"}

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Columns of `TileSchedule.entries` (one row per visited key tile).
ENTRY_K_START = 0  # first key row of the tile
ENTRY_K_END = 1  # one past the last valid key row (tiles stop at their segment's end)
ENTRY_K_SEGMENT = 2  # key segment index
ENTRY_K_SEGMENT_START = 3  # first key row of that segment (for CAUSAL offsets)
ENTRY_MASKED = 4  # 1 if some (row, key) of the tile needs an element mask
ENTRY_FIELDS = 5

_SCHEDULE_CACHE_SIZE = 256


def _check_lengths(lengths: object, name: str) -> tuple[int, ...]:
    if isinstance(lengths, torch.Tensor):
        if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise ValueError(
                f"{name} must be a 1-D sequence of integers, got a tensor of shape "
                f"{tuple(lengths.shape)} and dtype {lengths.dtype}"
            )
        lengths = lengths.tolist()
    if isinstance(lengths, (str, bytes)) or not isinstance(lengths, Sequence):
        raise TypeError(f"{name} must be a sequence of non-negative integers, got {lengths!r}")
    values = []
    for i, length in enumerate(lengths):
        if isinstance(length, bool) or not isinstance(length, numbers.Integral):
            raise TypeError(f"{name}[{i}] must be an integer, got {length!r}")
        if length < 0:
            raise ValueError(f"{name}[{i}] must be >= 0, got {int(length)}")
        values.append(int(length))
    if not values:
        raise ValueError(f"{name} must hold at least one segment, got an empty sequence")
    if sum(values) == 0:
        raise ValueError(f"{name} must sum to a positive number of rows, got {values}")
    return tuple(values)


def _starts(lengths: tuple[int, ...]) -> tuple[int, ...]:
    starts, total = [], 0
    for length in lengths:
        starts.append(total)
        total += length
    return tuple(starts)


def _check_visibility(visibility: object, num_q: int, num_k: int) -> torch.Tensor:
    try:
        matrix = torch.as_tensor(visibility)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(
            f"visibility must be a [num_q_segments, num_k_segments] integer matrix, "
            f"got {type(visibility).__name__}: {error}"
        ) from None
    if matrix.dtype.is_floating_point or matrix.dtype.is_complex:
        if not torch.equal(matrix, matrix.round()):
            raise ValueError(
                "visibility must hold the integers 0 (NONE), 1 (FULL), 2 (CAUSAL), "
                f"got non-integer values of dtype {matrix.dtype}"
            )
    if tuple(matrix.shape) != (num_q, num_k):
        raise ValueError(
            f"visibility must have shape [num_q_segments, num_k_segments] = [{num_q}, {num_k}], "
            f"got {tuple(matrix.shape)}"
        )
    matrix = matrix.to("cpu", torch.int64)
    bad = (matrix < NONE) | (matrix > CAUSAL)
    if bool(bad.any()):
        i, j = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            "visibility values must be 0 (NONE), 1 (FULL) or 2 (CAUSAL), "
            f"got {int(matrix[i, j])} at [{i}, {j}]"
        )
    return matrix.to(torch.int8).contiguous()


def _check_key_order(key_order: object, num_k: int) -> tuple[int, ...]:
    if key_order is None:
        return tuple(range(num_k))
    if isinstance(key_order, torch.Tensor):
        key_order = key_order.tolist()
    if isinstance(key_order, (str, bytes)) or not isinstance(key_order, Sequence):
        raise TypeError(f"key_order must be a sequence of integers, got {key_order!r}")
    if len(key_order) != num_k:
        raise ValueError(
            f"key_order must hold one rank per key segment ({num_k}), got {len(key_order)}"
        )
    for i, rank in enumerate(key_order):
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
            raise TypeError(f"key_order[{i}] must be an integer, got {rank!r}")
    return tuple(int(r) for r in key_order)


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


class SegmentLayout:
    """Query/key segments and their visibility matrix (0 NONE, 1 FULL, 2 CAUSAL).

    Args:
        q_lengths: rows of each query segment (>= 0 each, positive sum).
        k_lengths: rows of each key segment (>= 0 each, positive sum).
        visibility: ``[len(q_lengths), len(k_lengths)]`` integers in {0, 1, 2}; CAUSAL lets
            query offset ``a`` of its segment see key offsets ``b <= a`` of the key segment.
        key_order: optional rank per key segment; a query row visits key segments by
            ascending rank (ties: memory order). Results are the same up to rounding for any
            order; the order only fixes the floating-point summation order.
    """

    __slots__ = (
        "q_lengths",
        "k_lengths",
        "visibility",
        "key_order",
        "q_starts",
        "k_starts",
        "num_q_rows",
        "num_k_rows",
        "_key",
        "_row_info",
        "_tensors",
    )

    def __init__(self, q_lengths, k_lengths, visibility, *, key_order=None):
        self.q_lengths = _check_lengths(q_lengths, "q_lengths")
        self.k_lengths = _check_lengths(k_lengths, "k_lengths")
        self.visibility = _check_visibility(visibility, len(self.q_lengths), len(self.k_lengths))
        self.key_order = _check_key_order(key_order, len(self.k_lengths))
        self.q_starts = _starts(self.q_lengths)
        self.k_starts = _starts(self.k_lengths)
        self.num_q_rows = sum(self.q_lengths)
        self.num_k_rows = sum(self.k_lengths)
        self._key = (
            self.q_lengths,
            self.k_lengths,
            tuple(self.visibility.flatten().tolist()),
            self.key_order,
        )
        self._row_info = None
        self._tensors = None

    # ---- constructors ---------------------------------------------------------------------

    @classmethod
    def spiffy(
        cls,
        prefix_len: int,
        block_len: int,
        suffix_len: int,
        num_drafts: int,
        cached: bool = False,
    ) -> SegmentLayout:
        """The Spiffy verification layout (docs/DESIGN.md §3).

        Keys are ``[prefix, root, suffix, draft_1 .. draft_D]``. Without cache the query rows
        are the same; with ``cached=True`` they are ``[root, draft_1 .. draft_D]`` (prefix and
        suffix are keys only). Real rows see real keys; draft ``i`` sees prefix, suffix and
        itself. Each draft is visited in the root's slot (``key_order``), so a draft row does
        the same arithmetic as the root row would for the same tokens.
        """
        for name, value, minimum in (
            ("prefix_len", prefix_len, 0),
            ("block_len", block_len, 1),
            ("suffix_len", suffix_len, 0),
            ("num_drafts", num_drafts, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be an integer, got {value!r}")
            if value < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {int(value)}")
        if not isinstance(cached, bool):
            raise TypeError(f"cached must be a bool, got {cached!r}")
        p, b, s, d = int(prefix_len), int(block_len), int(suffix_len), int(num_drafts)
        k_lengths = (p, b, s) + (b,) * d
        num_k = 3 + d
        real_row = [FULL, FULL, FULL] + [NONE] * d

        def draft_row(i):
            row = [FULL, NONE, FULL] + [NONE] * d
            row[3 + i] = FULL
            return row

        drafts = [draft_row(i) for i in range(d)]
        if cached:
            q_lengths = (b,) + (b,) * d
            visibility = [real_row] + drafts
        else:
            q_lengths = k_lengths
            visibility = [real_row, real_row, real_row] + drafts
        key_order = (0, 1, 2) + (1,) * d
        assert len(visibility[0]) == num_k
        return cls(q_lengths, k_lengths, visibility, key_order=key_order)

    @classmethod
    def block_causal(cls, block_lengths) -> SegmentLayout:
        """Block-causal attention (SDAR): block ``i`` sees blocks ``0..i`` in full."""
        lengths = _check_lengths(block_lengths, "block_lengths")
        n = len(lengths)
        visibility = torch.tril(torch.ones(n, n, dtype=torch.int8)) * FULL
        return cls(lengths, lengths, visibility)

    @classmethod
    def simsd(cls, context, committed: int, block_len: int, cached: bool = False) -> SegmentLayout:
        """SimSD's verification layout for a block-causal model (docs/DECODING.md, SimSD).

        The block's state has its first `committed` positions filled and the other
        ``m = block_len - committed`` masked. ``m - 1`` reference rows follow the block, holding
        the draft's tokens for the masked positions but the last, at those positions' ids.
        Query rows: ``[context, C (committed), M0 (first masked), M1 (other masked), refs]``,
        keys ``[context, C, M, refs]``; with ``cached=True`` the context is keys only. Context:
        an int (one segment seen in full) or block-causal chunk lengths (uncached). Block rows
        see the context and the whole block (vanilla's view of the state); masked position
        ``p`` also sees the references at positions ``< p`` (M1 x refs is CAUSAL: M1 starts
        one position after the refs do); a reference sees the context, C and the references up
        to its own position.
        """
        if isinstance(context, numbers.Integral) and not isinstance(context, bool):
            if context < 0:
                raise ValueError(f"context must be >= 0, got {int(context)}")
            chunks = (int(context),)
        else:  # chunk lengths; all zero is an empty context
            chunks = _check_lengths(tuple(context) + (1,), "context")[:-1]
            if not chunks:
                raise ValueError("context must hold at least one chunk, got an empty sequence")
        for name, value in (("committed", committed), ("block_len", block_len)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be an integer, got {value!r}")
        if block_len < 1 or not 0 <= committed < block_len:
            raise ValueError(
                f"need block_len >= 1 and 0 <= committed < block_len (a masked position to "
                f"verify), got committed={committed}, block_len={block_len}"
            )
        if not isinstance(cached, bool):
            raise TypeError(f"cached must be a bool, got {cached!r}")
        if cached:
            chunks = (sum(chunks),)
        n, m, c = len(chunks), block_len - committed, int(committed)
        # Query segments split the masked rows after the first; key segments need not.
        q_block = (c, 1, m - 1, m - 1)
        k_lengths = chunks + (c, m, m - 1)
        ctx = [FULL] * n
        state_row = ctx + [FULL, FULL, NONE]
        masked_row = ctx + [FULL, FULL, CAUSAL]
        reference_row = ctx + [FULL, NONE, CAUSAL]
        block_rows = [state_row, state_row, masked_row, reference_row]
        if cached:
            return cls(q_block, k_lengths, block_rows)
        context_rows = [[FULL if j <= i else NONE for j in range(n)] + [NONE] * 3 for i in range(n)]
        return cls(chunks + q_block, k_lengths, context_rows + block_rows)

    @classmethod
    def full(cls, num_q_rows: int, num_k_rows: int | None = None) -> SegmentLayout:
        """Every query row sees every key (plain bidirectional attention)."""
        num_k_rows = num_q_rows if num_k_rows is None else num_k_rows
        return cls((num_q_rows,), (num_k_rows,), [[FULL]])

    @classmethod
    def from_tensors(cls, q_lengths, k_lengths, visibility, key_order) -> SegmentLayout:
        """The layout encoded by `to_tensors` (the form it takes through a torch op)."""
        return cls(q_lengths, k_lengths, visibility, key_order=key_order)

    # ---- views ----------------------------------------------------------------------------

    def to_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The layout as four small CPU tensors, the form it takes through a torch op
        (`spiffy_triton.ops`): ``q_lengths`` int64 ``[Sq]``, ``k_lengths`` int64 ``[Sk]``,
        ``visibility`` int8 ``[Sq, Sk]``, ``key_order`` int64 ``[Sk]``. Its bytes are
        O(segments), not O(rows x keys) like the dense mask. Inverse: `from_tensors`."""
        if self._tensors is not None:
            return self._tensors
        tensors = (
            torch.tensor(self.q_lengths, dtype=torch.int64),
            torch.tensor(self.k_lengths, dtype=torch.int64),
            torch.tensor(self._key[2], dtype=torch.int8).reshape(len(self.q_lengths), -1),
            torch.tensor(self.key_order, dtype=torch.int64),
        )
        if not torch.compiler.is_compiling():  # a traced forward makes them graph constants
            self._tensors = tensors
        return tensors

    @property
    def num_q_segments(self) -> int:
        return len(self.q_lengths)

    @property
    def num_k_segments(self) -> int:
        return len(self.k_lengths)

    def row_segments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(segment index, offset inside the segment) of every query row, int64 CPU ``[Mq]``."""
        if self._row_info is None:
            lengths = torch.tensor(self.q_lengths, dtype=torch.int64)
            starts = torch.tensor(self.q_starts, dtype=torch.int64)
            segment = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
            offset = torch.arange(self.num_q_rows) - starts[segment]
            self._row_info = (segment, offset)
        return self._row_info

    def to_dense(self, device=None) -> torch.Tensor:
        """The boolean ``[Mq, Mk]`` mask: ``True`` where query row ``i`` sees key ``j``."""
        q_seg, q_off = self.row_segments()
        k_lengths = torch.tensor(self.k_lengths, dtype=torch.int64)
        k_seg = torch.repeat_interleave(torch.arange(len(k_lengths)), k_lengths)
        k_off = torch.arange(self.num_k_rows) - torch.tensor(self.k_starts)[k_seg]
        vis = self.visibility.to(torch.int64)[q_seg[:, None], k_seg[None, :]]
        dense = (vis == FULL) | ((vis == CAUSAL) & (k_off[None, :] <= q_off[:, None]))
        return dense if device is None else dense.to(device)

    def visible_key_segments(self, q_segment: int) -> list[int]:
        """Key segments that query segment `q_segment` sees, in visiting order."""
        row = self.visibility[q_segment].tolist()
        visible = [j for j in range(self.num_k_segments) if row[j] != NONE and self.k_lengths[j]]
        return sorted(visible, key=lambda j: (self.key_order[j], j))

    def num_visible_pairs(self) -> int:
        """Number of visible (query row, key) pairs, from the segments (no dense mask)."""
        total = 0
        for i, qlen in enumerate(self.q_lengths):
            for j, klen in enumerate(self.k_lengths):
                vis = int(self.visibility[i, j])
                if vis == FULL:
                    total += qlen * klen
                elif vis == CAUSAL:
                    # query offset a sees keys 0..min(a, klen - 1)
                    full_rows = max(qlen - klen, 0)
                    ramp = min(qlen, klen)
                    total += ramp * (ramp + 1) // 2 + full_rows * klen
        return total

    # ---- identity -------------------------------------------------------------------------

    def __eq__(self, other):
        return isinstance(other, SegmentLayout) and self._key == other._key

    def __hash__(self):
        return hash(self._key)

    def __repr__(self):
        names = [[VISIBILITY_NAMES[v] for v in row] for row in self.visibility.tolist()]
        order = (
            ""
            if self.key_order == tuple(range(self.num_k_segments))
            else (f", key_order={list(self.key_order)}")
        )
        return (
            f"SegmentLayout(q_lengths={list(self.q_lengths)}, k_lengths={list(self.k_lengths)}, "
            f"visibility={names}{order})"
        )

    # ---- tile schedule --------------------------------------------------------------------

    def schedule(self, block_m: int, block_n: int, device=None) -> TileSchedule:
        """The tile schedule for query tiles of `block_m` rows and key tiles of `block_n`.

        Cached per ``(layout, block_m, block_n, device)``: every layer of a forward pass (and
        every equal layout built later) reuses the same small int32 tensors.
        """
        for name, value in (("block_m", block_m), ("block_n", block_n)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        device = torch.device("cpu" if device is None else device)
        cache_key = (self._key, int(block_m), int(block_n), str(device))
        with _schedule_lock:
            cached = _schedule_cache.get(cache_key)
            if cached is not None:
                _schedule_cache.move_to_end(cache_key)
                return cached
        cpu_key = (self._key, int(block_m), int(block_n), "cpu")
        with _schedule_lock:
            cpu_schedule = _schedule_cache.get(cpu_key)
        if cpu_schedule is None:
            cpu_schedule = self._build_schedule(int(block_m), int(block_n))
        result = cpu_schedule if device.type == "cpu" else cpu_schedule.to(device)
        with _schedule_lock:
            _schedule_cache[cpu_key] = cpu_schedule
            _schedule_cache[cache_key] = result
            while len(_schedule_cache) > _SCHEDULE_CACHE_SIZE:
                _schedule_cache.popitem(last=False)
        return result

    def _key_tiles(self, block_n: int) -> list[tuple[int, int, int]]:
        """(start, end, segment) of every key tile, tiles aligned to segment starts."""
        tiles = []
        for seg, (start, length) in enumerate(zip(self.k_starts, self.k_lengths)):
            for tile_start in range(start, start + length, block_n):
                tiles.append((tile_start, min(tile_start + block_n, start + length), seg))
        return tiles

    def _build_schedule(self, block_m: int, block_n: int) -> TileSchedule:
        vis = self.visibility.tolist()
        key_tiles = self._key_tiles(block_n)
        tiles_of_segment: dict[int, list[int]] = {}
        for index, (_, _, seg) in enumerate(key_tiles):
            tiles_of_segment.setdefault(seg, []).append(index)
        # Visiting order: by key segment rank, then memory order.
        rank = {index: (self.key_order[seg], index) for index, (_, _, seg) in enumerate(key_tiles)}

        num_q_tiles = math.ceil(self.num_q_rows / block_m)
        offsets = [0]
        entries: list[tuple[int, int, int, int, int]] = []
        q_ends = [s + n for s, n in zip(self.q_starts, self.q_lengths)]
        first_segment = 0
        for t in range(num_q_tiles):
            row_lo, row_hi = t * block_m, min((t + 1) * block_m, self.num_q_rows)
            while q_ends[first_segment] <= row_lo:
                first_segment += 1
            # For each key tile: does any row of the query tile see one of its keys, and in
            # how many of the tile's query segments does every row see every key?
            any_visible: set[int] = set()
            all_visible_count: dict[int, int] = {}
            num_segments = 0
            seg = first_segment
            while seg < self.num_q_segments and self.q_starts[seg] < row_hi:
                if self.q_lengths[seg]:
                    num_segments += 1
                    a_lo = max(row_lo, self.q_starts[seg]) - self.q_starts[seg]
                    a_hi = min(row_hi, q_ends[seg]) - self.q_starts[seg] - 1
                    for k_seg, relation in enumerate(vis[seg]):
                        if relation == NONE:
                            continue
                        for index in tiles_of_segment.get(k_seg, ()):
                            k_lo, k_hi, _ = key_tiles[index]
                            b_lo = k_lo - self.k_starts[k_seg]
                            b_hi = k_hi - self.k_starts[k_seg] - 1
                            if relation == CAUSAL and b_lo > a_hi:
                                continue
                            any_visible.add(index)
                            if relation == FULL or b_hi <= a_lo:
                                all_visible_count[index] = all_visible_count.get(index, 0) + 1
                seg += 1
            for index in sorted(any_visible, key=rank.__getitem__):
                k_lo, k_hi, k_seg = key_tiles[index]
                unmasked = (
                    all_visible_count.get(index, 0) == num_segments and k_hi - k_lo == block_n
                )
                entries.append((k_lo, k_hi, k_seg, self.k_starts[k_seg], int(not unmasked)))
            offsets.append(len(entries))

        q_seg, q_off = self.row_segments()
        return TileSchedule(
            block_m=block_m,
            block_n=block_n,
            num_q_tiles=num_q_tiles,
            tile_offsets=torch.tensor(offsets, dtype=torch.int32),
            entries=torch.tensor(entries, dtype=torch.int32).reshape(-1, ENTRY_FIELDS),
            row_segment=q_seg.to(torch.int32),
            row_offset=q_off.to(torch.int32),
            visibility=self.visibility.to(torch.int32).flatten().contiguous(),
        )


def validate_attention_inputs(q, k, v, layout, scale, return_lse) -> float:
    """Check the arguments of ``graph_attention`` (both backends); return the softmax scale.

    ``q [B, Hq, Mq, d]``, ``k, v [B, Hkv, Mk, d]`` on one device, one floating dtype,
    ``Hq % Hkv == 0``, ``Mq == layout.num_q_rows``, ``Mk == layout.num_k_rows``.
    """
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"graph_attention: {name} must be a torch.Tensor, got {type(tensor)}")
        if tensor.dim() != 4:
            raise ValueError(
                f"graph_attention: {name} must be 4-D [batch, heads, rows, head_dim], "
                f"got shape {tuple(tensor.shape)}"
            )
    if not isinstance(layout, SegmentLayout):
        raise TypeError(
            f"graph_attention: layout must be a spiffy_triton.SegmentLayout, got {type(layout)}"
        )
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"graph_attention: q must be float16, bfloat16, float32 or float64, got {q.dtype}"
        )
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(
            f"graph_attention: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(
            f"graph_attention: q, k, v must be on one device, got {q.device}, {k.device}, "
            f"{v.device}"
        )
    batch, q_heads, q_rows, head_dim = q.shape
    if tuple(k.shape) != tuple(v.shape):
        raise ValueError(
            f"graph_attention: k and v must have the same shape, got {tuple(k.shape)} and "
            f"{tuple(v.shape)}"
        )
    k_batch, kv_heads, k_rows, k_dim = k.shape
    if k_batch != batch:
        raise ValueError(f"graph_attention: k has batch {k_batch}, q has batch {batch}")
    if k_dim != head_dim:
        raise ValueError(f"graph_attention: k/v head_dim {k_dim} != q head_dim {head_dim}")
    if head_dim == 0:
        raise ValueError("graph_attention: head_dim must be positive, got 0")
    if kv_heads == 0 or q_heads % kv_heads != 0:
        raise ValueError(
            f"graph_attention: q heads ({q_heads}) must be a positive multiple of k/v heads "
            f"({kv_heads})"
        )
    if q_rows != layout.num_q_rows:
        raise ValueError(
            f"graph_attention: q has {q_rows} rows (dim 2) but layout.num_q_rows is "
            f"{layout.num_q_rows} (q_lengths {list(layout.q_lengths)})"
        )
    if k_rows != layout.num_k_rows:
        raise ValueError(
            f"graph_attention: k/v have {k_rows} rows (dim 2) but layout.num_k_rows is "
            f"{layout.num_k_rows} (k_lengths {list(layout.k_lengths)})"
        )
    if not isinstance(return_lse, bool):
        raise TypeError(f"graph_attention: return_lse must be a bool, got {return_lse!r}")
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"graph_attention: scale must be a real number or None, got {scale!r}")
    if not math.isfinite(float(scale)) or float(scale) <= 0.0:
        raise ValueError(f"graph_attention: scale must be finite and > 0, got {scale!r}")
    return float(scale)
