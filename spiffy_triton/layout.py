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
``(block_m, block_n, device)`` and cached, so every layer of a model reuses it
(`spiffy_triton/tile_schedule.py`).

`validate_attention_inputs` is the one input check shared by the Triton kernel and its
PyTorch reference, so both raise the same errors; it and the constructor's argument checks are
in `spiffy_triton/layout_checks.py`. This module re-exports both modules' public names (the
kernels read the ``ENTRY_*`` columns and `FULL` / `CAUSAL` from here).

Imports only those two: this module sits at the bottom of the module map.
"""

from __future__ import annotations

import numbers

import torch

from .layout_checks import (
    CAUSAL,
    FULL,
    NONE,
    SUPPORTED_DTYPES,
    VISIBILITY_NAMES,
    check_key_order,
    check_lengths,
    check_visibility,
    starts,
    validate_attention_inputs,
)
from .tile_schedule import (
    ENTRY_FIELDS,
    ENTRY_K_END,
    ENTRY_K_SEGMENT,
    ENTRY_K_SEGMENT_START,
    ENTRY_K_START,
    ENTRY_MASKED,
    TileSchedule,
    layout_schedule,
)

__all__ = [
    "CAUSAL",
    "ENTRY_FIELDS",
    "ENTRY_K_END",
    "ENTRY_K_SEGMENT",
    "ENTRY_K_SEGMENT_START",
    "ENTRY_K_START",
    "ENTRY_MASKED",
    "FULL",
    "NONE",
    "SUPPORTED_DTYPES",
    "VISIBILITY_NAMES",
    "SegmentLayout",
    "TileSchedule",
    "validate_attention_inputs",
]


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
        self.q_lengths = check_lengths(q_lengths, "q_lengths")
        self.k_lengths = check_lengths(k_lengths, "k_lengths")
        self.visibility = check_visibility(visibility, len(self.q_lengths), len(self.k_lengths))
        self.key_order = check_key_order(key_order, len(self.k_lengths))
        self.q_starts = starts(self.q_lengths)
        self.k_starts = starts(self.k_lengths)
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
        lengths = check_lengths(block_lengths, "block_lengths")
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
            chunks = check_lengths(tuple(context) + (1,), "context")[:-1]
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
        """The tile schedule for query tiles of `block_m` rows and key tiles of `block_n`
        (`spiffy_triton.tile_schedule`).

        Cached per ``(layout, block_m, block_n, device)``: every layer of a forward pass (and
        every equal layout built later) reuses the same small int32 tensors.
        """
        return layout_schedule(self, block_m, block_n, device)
