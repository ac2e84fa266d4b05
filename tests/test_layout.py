"""SegmentLayout: constructors, dense view, validation, and the tile schedule (vs brute force)."""

from __future__ import annotations

import random

import pytest
import torch

from spiffy_triton import SegmentLayout
from spiffy_triton.layout import (
    CAUSAL,
    ENTRY_K_END,
    ENTRY_K_SEGMENT,
    ENTRY_K_SEGMENT_START,
    ENTRY_K_START,
    ENTRY_MASKED,
    FULL,
    NONE,
)


def dense_by_definition(layout: SegmentLayout) -> torch.Tensor:
    """The mask by looping over every (row, key) pair: the definition, no vectorisation."""
    mask = torch.zeros(layout.num_q_rows, layout.num_k_rows, dtype=torch.bool)
    for i, (qs, ql) in enumerate(zip(layout.q_starts, layout.q_lengths)):
        for j, (ks, kl) in enumerate(zip(layout.k_starts, layout.k_lengths)):
            relation = int(layout.visibility[i, j])
            for a in range(ql):
                for b in range(kl):
                    if relation == FULL or (relation == CAUSAL and b <= a):
                        mask[qs + a, ks + b] = True
    return mask


def random_layout(rng: random.Random, max_segments: int = 5, max_len: int = 9) -> SegmentLayout:
    while True:
        q_lengths = [rng.randint(0, max_len) for _ in range(rng.randint(1, max_segments))]
        k_lengths = [rng.randint(0, max_len) for _ in range(rng.randint(1, max_segments))]
        if sum(q_lengths) and sum(k_lengths):
            break
    visibility = [[rng.choice((NONE, FULL, CAUSAL)) for _ in k_lengths] for _ in q_lengths]
    key_order = [rng.randint(0, 3) for _ in k_lengths] if rng.random() < 0.5 else None
    return SegmentLayout(q_lengths, k_lengths, visibility, key_order=key_order)


# ---- spiffy / block-causal ------------------------------------------------------------------


def spiffy_by_definition(p, b, s, d, cached):
    """Segment kinds of keys and query rows, and the rule of docs/DESIGN.md §3."""
    keys = ["prefix"] * p + ["root"] * b + ["suffix"] * s
    keys += [f"draft{i}" for i in range(d) for _ in range(b)]
    queries = (
        keys if not cached else ["root"] * b + [f"draft{i}" for i in range(d) for _ in range(b)]
    )
    real = {"prefix", "root", "suffix"}
    mask = torch.zeros(len(queries), len(keys), dtype=torch.bool)
    for r, qk in enumerate(queries):
        for c, kk in enumerate(keys):
            if qk in real:
                mask[r, c] = kk in real
            else:
                mask[r, c] = kk in ("prefix", "suffix") or kk == qk
    return mask


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("p,b,s,d", [(0, 1, 0, 0), (5, 4, 3, 2), (0, 3, 7, 4), (6, 2, 0, 16)])
def test_spiffy_matches_definition(p, b, s, d, cached):
    layout = SegmentLayout.spiffy(p, b, s, d, cached=cached)
    expected = spiffy_by_definition(p, b, s, d, cached)
    assert torch.equal(layout.to_dense(), expected)
    assert layout.num_k_rows == p + b + s + d * b
    assert layout.num_q_rows == (b * (1 + d) if cached else p + b + s + d * b)
    assert layout.num_visible_pairs() == int(expected.sum())


def test_spiffy_segment_order_is_the_contract():
    layout = SegmentLayout.spiffy(10, 4, 6, 2)
    assert layout.k_lengths == (10, 4, 6, 4, 4)
    assert layout.q_lengths == (10, 4, 6, 4, 4)
    assert layout.k_starts == (0, 10, 14, 20, 24)
    cached = SegmentLayout.spiffy(10, 4, 6, 2, cached=True)
    assert cached.q_lengths == (4, 4, 4)
    assert cached.k_lengths == (10, 4, 6, 4, 4)
    # drafts are visited in the root's slot: prefix, root, drafts, suffix
    assert cached.visible_key_segments(0) == [0, 1, 2]
    assert cached.visible_key_segments(1) == [0, 3, 2]


def test_block_causal():
    layout = SegmentLayout.block_causal([3, 0, 2, 4])
    mask = layout.to_dense()
    assert torch.equal(mask, dense_by_definition(layout))
    assert mask[0, :3].all() and not mask[0, 3:].any()
    assert mask[3:5, :5].all() and not mask[3:5, 5:].any()
    assert mask[5:].all()


def test_full_and_equality():
    a = SegmentLayout.full(5, 7)
    assert a.to_dense().all() and a.to_dense().shape == (5, 7)
    b = SegmentLayout([5], [7], torch.tensor([[1]]))
    assert a == b and hash(a) == hash(b)
    assert a != SegmentLayout([5], [7], [[2]])
    assert "FULL" in repr(a)


@pytest.mark.parametrize("seed", range(40))
def test_to_dense_and_pair_count_match_definition(seed):
    layout = random_layout(random.Random(seed))
    expected = dense_by_definition(layout)
    assert torch.equal(layout.to_dense(), expected)
    assert layout.num_visible_pairs() == int(expected.sum())


# ---- tile schedule --------------------------------------------------------------------------


def check_schedule(layout: SegmentLayout, block_m: int, block_n: int):
    """The schedule equals what brute force over the dense mask says, entry by entry."""
    sched = layout.schedule(block_m, block_n)
    mask = layout.to_dense()
    key_tiles = []
    for seg, (start, length) in enumerate(zip(layout.k_starts, layout.k_lengths)):
        for lo in range(start, start + length, block_n):
            key_tiles.append((lo, min(lo + block_n, start + length), seg))
    order = sorted(range(len(key_tiles)), key=lambda i: (layout.key_order[key_tiles[i][2]], i))
    offsets = sched.tile_offsets.tolist()
    assert len(offsets) == sched.num_q_tiles + 1 == -(-layout.num_q_rows // block_m) + 1
    covered = torch.zeros_like(mask)
    for t in range(sched.num_q_tiles):
        rows = slice(t * block_m, min((t + 1) * block_m, layout.num_q_rows))
        expected = []
        for i in order:
            lo, hi, seg = key_tiles[i]
            block = mask[rows, lo:hi]
            if block.any():
                masked = not (bool(block.all()) and hi - lo == block_n)
                expected.append((lo, hi, seg, layout.k_starts[seg], int(masked)))
        got = [tuple(e) for e in sched.entries[offsets[t] : offsets[t + 1]].tolist()]
        assert got == expected, f"query tile {t}: {got} != {expected}"
        for e in got:
            covered[rows, e[ENTRY_K_START] : e[ENTRY_K_END]] = True
    assert not (mask & ~covered).any(), "a visible pair lies in no scheduled tile"
    seg, off = layout.row_segments()
    assert torch.equal(sched.row_segment.long(), seg) and torch.equal(sched.row_offset.long(), off)


@pytest.mark.parametrize("seed", range(60))
def test_schedule_matches_brute_force(seed):
    rng = random.Random(1000 + seed)
    layout = random_layout(rng, max_segments=6, max_len=12)
    check_schedule(layout, rng.choice((1, 2, 4, 8)), rng.choice((1, 2, 4, 8)))


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("d", [0, 1, 5])
def test_schedule_spiffy(d, cached):
    layout = SegmentLayout.spiffy(37, 8, 21, d, cached=cached)
    check_schedule(layout, 16, 16)
    check_schedule(layout, 8, 4)


def test_schedule_entry_columns_and_draft_tiles_aligned():
    layout = SegmentLayout.spiffy(7, 5, 3, 3, cached=True)
    sched = layout.schedule(5, 4)
    entries = sched.entries
    # every key tile starts at its segment start + a multiple of block_n and stays inside it
    for e in entries.tolist():
        seg = e[ENTRY_K_SEGMENT]
        assert e[ENTRY_K_SEGMENT_START] == layout.k_starts[seg]
        assert (e[ENTRY_K_START] - layout.k_starts[seg]) % 4 == 0
        assert e[ENTRY_K_END] <= layout.k_starts[seg] + layout.k_lengths[seg]
    # a draft-only query tile (rows of draft 2) sees prefix, own draft, suffix: in that order
    tile = 3  # rows 15..19 = draft 3 (0-based draft index 2)
    lo, hi = sched.tile_offsets[tile].item(), sched.tile_offsets[tile + 1].item()
    segs = [e[ENTRY_K_SEGMENT] for e in entries[lo:hi].tolist()]
    assert segs == [0, 0, 5, 5, 2]
    assert [e[ENTRY_MASKED] for e in entries[lo:hi].tolist()] == [0, 1, 0, 1, 1]


def test_schedule_is_cached_and_shared_by_equal_layouts():
    a = SegmentLayout.spiffy(9, 4, 3, 2)
    b = SegmentLayout.spiffy(9, 4, 3, 2)
    assert a.schedule(8, 8) is a.schedule(8, 8)
    assert b.schedule(8, 8) is a.schedule(8, 8)
    assert a.schedule(8, 4) is not a.schedule(8, 8)


# ---- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,error,match",
    [
        (([2, -1], [3], [[1], [1]]), ValueError, r"q_lengths\[1\] must be >= 0"),
        (([0, 0], [3], [[1], [1]]), ValueError, "q_lengths must sum to a positive"),
        (([2], [0], [[1]]), ValueError, "k_lengths must sum to a positive"),
        (([], [3], []), ValueError, "q_lengths must hold at least one segment"),
        (([2.5], [3], [[1]]), TypeError, r"q_lengths\[0\] must be an integer"),
        (([True], [3], [[1]]), TypeError, r"q_lengths\[0\] must be an integer"),
        (("ab", [3], [[1]]), TypeError, "q_lengths must be a sequence"),
        (([2], [3], [[1, 1]]), ValueError, r"visibility must have shape .* = \[1, 1\]"),
        (([2, 1], [3], [[1]]), ValueError, r"visibility must have shape .* = \[2, 1\]"),
        (([2], [3], [[3]]), ValueError, r"visibility values must be 0 \(NONE\).*got 3 at \[0, 0\]"),
        (([2], [3], [[-1]]), ValueError, "visibility values must be"),
        (([2], [3], [[0.5]]), ValueError, "visibility must hold the integers"),
        (([2], [3], "x"), (TypeError, ValueError), "visibility"),
    ],
)
def test_constructor_rejects_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        SegmentLayout(*args)


def test_key_order_validation():
    with pytest.raises(ValueError, match="key_order must hold one rank per key segment"):
        SegmentLayout([2], [3, 1], [[1, 1]], key_order=[0])
    with pytest.raises(TypeError, match=r"key_order\[1\] must be an integer"):
        SegmentLayout([2], [3, 1], [[1, 1]], key_order=[0, "a"])


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(prefix_len=-1), ValueError, "prefix_len must be >= 0"),
        (dict(block_len=0), ValueError, "block_len must be >= 1"),
        (dict(suffix_len=-2), ValueError, "suffix_len must be >= 0"),
        (dict(num_drafts=-1), ValueError, "num_drafts must be >= 0"),
        (dict(num_drafts=1.0), TypeError, "num_drafts must be an integer"),
        (dict(cached="yes"), TypeError, "cached must be a bool"),
    ],
)
def test_spiffy_rejects_bad_input(kwargs, error, match):
    args = dict(prefix_len=4, block_len=2, suffix_len=3, num_drafts=2)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        SegmentLayout.spiffy(**args)


def test_block_causal_and_schedule_reject_bad_input():
    with pytest.raises(ValueError, match=r"block_lengths\[0\] must be >= 0"):
        SegmentLayout.block_causal([-1, 2])
    with pytest.raises(ValueError, match="block_m must be a positive integer"):
        SegmentLayout.full(4).schedule(0, 4)
