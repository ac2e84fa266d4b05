"""Fused marginals over the vocabulary, and confidence ranking of positions (Triton).

`marginals` reads each logits row once and returns the chosen token (argmax, or Gumbel-max
with counter-based Philox noise), its softmax probability, the top-k tokens and
probabilities, log-sum-exp and entropy. Semantics, noise keying and the defined answers for
-inf / NaN / +inf rows are those of the reference twin `reference/marginals.py` and
docs/MARGINALS.md.

How it works:
- One program reduces a contiguous vocabulary range of one row in blocks of BLOCK_V with an
  online softmax that also carries the entropy term t = sum e^(x - m) (x - m), so entropy =
  log s - t / s needs no second pass and no cancellation against the max.
- Ranking is exact on int64 keys: the order-preserving integer image of the fp32 value in the
  high word, (2**31 - 1 - vocab id) in the low word, so one integer max gives the largest
  value and, among equals, the lowest id. The running top-k is a KP-slot list; a block is
  searched for candidates only when its max beats the current k-th key (rarely, after the
  first blocks), so top-k costs about one scalar compare per block.
- Gumbel noise: Philox4x32-10 on a [Q, 4, 256] tile, one call for four vocabulary ids (the
  lane of 256 contiguous ids picks the output word), keyed by (seed, step, position).
- Few rows: the vocabulary is split over SPLITS programs per row; a second small kernel
  combines the partial (m, s, t), flags and top-k lists. With one split the first kernel
  finalizes in place. The split count depends only on (rows, V): results are reproducible,
  and token / top-k ids are bitwise independent of it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from spiffy_triton import contract, triton_mode
from spiffy_triton.contract import (
    count_above_threshold,
    inverse_temperature,
    validate_marginals_args,
    validate_rank_args,
)
from spiffy_triton.types import MarginalsOutput

__all__ = [
    "marginals",
    "rank_positions",
    "count_above_threshold",
    "philox_uint32",
    "gumbel_noise",
    "compile_configs",
]

# Host-side configuration (shapes only, no autotuning: results are reproducible).
TARGET_PROGRAMS = 264  # two waves of an H100's 132 SMs
MIN_BLOCKS_PER_SPLIT = 2
MAX_SPLITS = 64  # the combine kernel holds MAX_SPLITS x KP keys in one warp's registers
RANK_BLOCK = 64

# The contract's constants as compile-time globals of the kernels (spiffy_triton/contract.py):
# written once there, read here by name.
PHILOX_M0 = tl.constexpr(contract.PHILOX_M0)
PHILOX_M1 = tl.constexpr(contract.PHILOX_M1)
PHILOX_W0 = tl.constexpr(contract.PHILOX_W0)
PHILOX_W1 = tl.constexpr(contract.PHILOX_W1)
PHILOX_ROUNDS = tl.constexpr(contract.PHILOX_ROUNDS)
LANE_SPAN = tl.constexpr(contract.LANE_SPAN)
LANES = tl.constexpr(contract.LANES)
NOISE_CHUNK = tl.constexpr(contract.NOISE_CHUNK)
GUMBEL_STREAM = tl.constexpr(contract.GUMBEL_STREAM)
TWO_POW_M32 = tl.constexpr(contract.TWO_POW_M32)
SERIES_CUTOFF = tl.constexpr(contract.SERIES_CUTOFF)
KEY_SENTINEL = tl.constexpr(contract.KEY_SENTINEL)  # below every real packed key
KEY_ID_FLIP = tl.constexpr(contract.MAX_VOCAB)  # a packed key's low word is MAX_VOCAB - id


# --------------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------------


@triton.jit
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint32 tensors / scalars (Salmon et al., SC'11)."""
    for _ in tl.static_range(PHILOX_ROUNDS):
        hi0 = tl.umulhi(c0, PHILOX_M0)
        lo0 = c0 * PHILOX_M0
        hi1 = tl.umulhi(c2, PHILOX_M1)
        lo1 = c2 * PHILOX_M1
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + PHILOX_W0
        k1 = k1 + PHILOX_W1
    return c0, c1, c2, c3


@triton.jit
def _noise_words(chunk_index, position, step, stream, k0, k1, QB: tl.constexpr):
    """The 32-bit words of the vocabulary ids chunk_index * NOISE_CHUNK + the
    [Q, LANES, LANE_SPAN] tile."""
    tl.static_assert(LANES == 4, "a Philox4x32 call gives four words: one lane each")
    q = tl.arange(0, QB)[:, None, None]
    lane = tl.arange(0, LANES)[None, :, None]
    i = tl.arange(0, LANE_SPAN)[None, None, :]
    counter0 = ((chunk_index + q) * LANE_SPAN + i).to(tl.uint32)
    w0, w1, w2, w3 = _philox4x32_10(counter0, position, step, stream, k0, k1)
    return tl.where(lane == 0, w0, tl.where(lane == 1, w1, tl.where(lane == 2, w2, w3)))


@triton.jit
def _vocab_tile(QB: tl.constexpr):
    """Offsets of a [QB, LANES, LANE_SPAN] tile of contiguous vocabulary ids (the Philox lane
    layout)."""
    return (
        tl.arange(0, QB)[:, None, None] * NOISE_CHUNK
        + tl.arange(0, LANES)[None, :, None] * LANE_SPAN
        + tl.arange(0, LANE_SPAN)[None, None, :]
    )


@triton.jit
def _tile_max(x):
    """Max of a [Q, 4, 256] tile, reduced axis by axis."""
    return tl.max(tl.max(tl.max(x, axis=2), axis=1), axis=0)


@triton.jit
def _tile_sum(x):
    """Sum of a [Q, 4, 256] tile, reduced axis by axis."""
    return tl.sum(tl.sum(tl.sum(x, axis=2), axis=1), axis=0)


@triton.jit
def _gumbel_from_uint32(bits):
    """Standard Gumbel noise (fp32) from uint32 words; mirrors reference gumbel_from_uint32."""
    upper = bits >= 0x80000000
    source = tl.where(upper, bits ^ 0xFFFFFFFF, bits).to(tl.float32)
    v = (source + 0.5) * TWO_POW_M32
    series = v * (1.0 + v * (0.5 + v * (0.3333333333333333 + v * 0.25)))
    exp_upper = tl.where(v < SERIES_CUTOFF, series, -tl.log(1.0 - v))
    exponential = tl.where(upper, exp_upper, -tl.log(v))
    return -tl.log(exponential)


@triton.jit
def _ordered_key(x):
    """int32 with the order of the fp32 values: -0 == +0, every NaN above +inf."""
    x = tl.where(x == 0.0, 0.0, x)
    bits = x.to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return tl.where(x != x, 0x7FFFFFFF, key)


@triton.jit
def _key_value(packed):
    """The fp32 value in the high word of a packed key."""
    key = (packed >> 32).to(tl.int32)
    bits = tl.where(key < 0, key ^ 0x7FFFFFFF, key)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _id_word(vocab_id):
    """``MAX_VOCAB - id``, the low word of a packed key (so ties go to the lowest id); an
    involution, so it also reads the id back. Written tensor first: the interpreter would wrap
    ``constexpr - tensor`` in a constexpr."""
    return -(vocab_id - KEY_ID_FLIP)


@triton.jit
def _key_id(packed):
    return _id_word(packed.to(tl.int32))


@triton.jit
def _pack(key, vocab_id, valid):
    packed = (key.to(tl.int64) << 32) | _id_word(vocab_id).to(tl.int64)
    return tl.where(valid, packed, KEY_SENTINEL)


@triton.jit
def _insert(topk, candidate, slots, K: tl.constexpr, KP: tl.constexpr):
    """Replace the smallest of the first K slots by `candidate` when it is larger."""
    live = tl.where(slots < K, topk, 9223372036854775807)
    smallest = tl.min(live, axis=0)
    slot = tl.min(tl.where(live == smallest, slots, KP), axis=0)
    return tl.where((slots == slot) & (candidate > smallest), candidate, topk)


@triton.jit
def _finalize(
    row,
    m,
    s,
    t,
    flag,
    topk,
    best,
    row_ptr,
    stride_vocab,
    token_ptr,
    prob_ptr,
    topk_tokens_ptr,
    topk_probs_ptr,
    lse_ptr,
    entropy_ptr,
    K: tl.constexpr,
    SAMPLE: tl.constexpr,
):
    """Write one row's outputs from its reduced statistics (flag: 2 NaN, 1 +inf, 0 clean)."""
    has_mass = s > 0.0
    safe_s = tl.where(has_mass, s, 1.0)
    log_s = tl.log(safe_s)
    lse = tl.where(has_mass, m + log_s, float("-inf"))
    entropy = tl.where(has_mass, log_s - t / safe_s, 0.0)
    lse = tl.where(flag == 2, float("nan"), tl.where(flag == 1, float("inf"), lse))
    entropy = tl.where(flag > 0, float("nan"), entropy)
    tl.store(lse_ptr + row, lse)
    tl.store(entropy_ptr + row, entropy)
    safe_lse = tl.where((flag > 0) | (lse == float("-inf")), 0.0, lse)  # no inf - inf below

    top_token = tl.zeros((), tl.int64)
    top_prob = tl.zeros((), tl.float32)
    for j in tl.static_range(K):
        b = tl.max(topk, axis=0)
        topk = tl.where(topk == b, KEY_SENTINEL, topk)
        real = b != KEY_SENTINEL  # slots past V stay empty
        p = tl.exp(_key_value(b) - safe_lse)
        p = tl.where(lse == float("-inf"), 0.0, p)
        p = tl.where(flag > 0, float("nan"), p)
        p = tl.where(real, p, 0.0)
        token = tl.where(real, _key_id(b), -1).to(tl.int64)
        tl.store(topk_tokens_ptr + row * K + j, token)
        tl.store(topk_probs_ptr + row * K + j, p)
        if j == 0:
            top_token = token
            top_prob = p
    if SAMPLE:
        token = _key_id(best).to(tl.int64)
        x = tl.load(row_ptr + token * stride_vocab).to(tl.float32)
        p = tl.where(lse == float("-inf"), 0.0, tl.exp(x - safe_lse))
        top_prob = tl.where(flag > 0, float("nan"), p)
        top_token = token
    tl.store(token_ptr + row, top_token)
    tl.store(prob_ptr + row, top_prob)


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


# An int argument equal to 1 is specialized to a constexpr by the launcher, and a constexpr int
# has no `.to`: the noise keys must stay runtime i32 whatever their value (step 1, seed 1).
@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "step"])
def _marginals_kernel(
    logits_ptr,
    positions_ptr,
    part_stats_ptr,
    part_flag_ptr,
    part_topk_ptr,
    part_best_ptr,
    token_ptr,
    prob_ptr,
    topk_tokens_ptr,
    topk_probs_ptr,
    lse_ptr,
    entropy_ptr,
    V,
    stride_row,
    stride_vocab,
    blocks_per_split,
    num_splits,
    inv_t,
    seed_lo,
    seed_hi,
    step,
    K: tl.constexpr,
    KP: tl.constexpr,
    BLOCK_V: tl.constexpr,
    SAMPLE: tl.constexpr,
    FINALIZE: tl.constexpr,
):
    row = tl.program_id(0)
    split = tl.program_id(1)
    QB: tl.constexpr = BLOCK_V // NOISE_CHUNK
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    tile = _vocab_tile(QB)
    slots = tl.arange(0, KP)
    first_block = split * blocks_per_split
    end_block = tl.minimum(first_block + blocks_per_split, tl.cdiv(V, BLOCK_V))

    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), tl.float32)
    t = tl.zeros((), tl.float32)
    flag = tl.zeros((), tl.int32)
    topk = tl.full((KP,), KEY_SENTINEL, tl.int64)
    best = tl.full((), KEY_SENTINEL, tl.int64)
    if SAMPLE:
        position = tl.load(positions_ptr + row).to(tl.uint32)
        k0 = seed_lo.to(tl.uint32, bitcast=True)
        k1 = seed_hi.to(tl.uint32, bitcast=True)
        step_u = step.to(tl.uint32, bitcast=True)

    for block in range(first_block, end_block):
        block_start = block * BLOCK_V  # a multiple of BLOCK_V: aligned, vectorized loads
        vocab_id = block_start + tile
        valid = vocab_id < V
        x = tl.load(row_ptr + vocab_id.to(tl.int64) * stride_vocab, mask=valid, other=float("-inf"))
        x = x.to(tl.float32)
        is_nan = x != x
        is_pinf = x == float("inf")
        clean = tl.where(is_nan | is_pinf, float("-inf"), x)

        # online softmax with the entropy term
        block_max = _tile_max(clean)
        new_m = tl.maximum(m, block_max)
        shift = tl.where(new_m == float("-inf"), 0.0, new_m)
        diff = clean - shift
        e = tl.exp(diff)
        te = e * tl.maximum(diff, -3.4e38)  # e == 0 where diff == -inf
        alpha = tl.exp(m - shift)
        old_m = tl.where(s > 0.0, m, shift)  # keeps -inf * 0 out of the rescale
        t = alpha * (t + (old_m - shift) * s) + _tile_sum(te)
        s = alpha * s + _tile_sum(e)
        m = new_m
        block_flag = _tile_max(tl.where(is_nan, 2, tl.where(is_pinf, 1, 0)))
        flag = tl.maximum(flag, block_flag)

        # top-k: search the block only when its max beats the current k-th key
        kth = tl.min(tl.where(slots < K, topk, 9223372036854775807), axis=0)
        if (_ordered_key(block_max) > (kth >> 32).to(tl.int32)) | (block_flag > 0):
            packed = _pack(_ordered_key(x), vocab_id, valid)
            count = _tile_sum((packed > kth).to(tl.int32))
            for _ in range(tl.minimum(count, K)):
                b = _tile_max(packed)
                topk = _insert(topk, b, slots, K, KP)
                packed = tl.where(packed == b, KEY_SENTINEL, packed)

        if SAMPLE:
            words = _noise_words(
                block_start // NOISE_CHUNK, position, step_u, GUMBEL_STREAM, k0, k1, QB
            )
            score = x * inv_t + _gumbel_from_uint32(words)
            packed_score = _pack(_ordered_key(score), vocab_id, valid)
            best = tl.maximum(best, _tile_max(packed_score))

    if FINALIZE:
        _finalize(
            row,
            m,
            s,
            t,
            flag,
            topk,
            best,
            row_ptr,
            stride_vocab,
            token_ptr,
            prob_ptr,
            topk_tokens_ptr,
            topk_probs_ptr,
            lse_ptr,
            entropy_ptr,
            K,
            SAMPLE,
        )
    else:
        part = row * num_splits + split
        tl.store(part_stats_ptr + part * 3 + 0, m)
        tl.store(part_stats_ptr + part * 3 + 1, s)
        tl.store(part_stats_ptr + part * 3 + 2, t)
        tl.store(part_flag_ptr + part, flag)
        tl.store(part_topk_ptr + part * KP + slots, topk)
        tl.store(part_best_ptr + part, best)


@triton.jit
def _combine_kernel(
    logits_ptr,
    part_stats_ptr,
    part_flag_ptr,
    part_topk_ptr,
    part_best_ptr,
    token_ptr,
    prob_ptr,
    topk_tokens_ptr,
    topk_probs_ptr,
    lse_ptr,
    entropy_ptr,
    stride_row,
    stride_vocab,
    num_splits,
    K: tl.constexpr,
    KP: tl.constexpr,
    BLOCK_S: tl.constexpr,
    SAMPLE: tl.constexpr,
):
    row = tl.program_id(0)
    splits = tl.arange(0, BLOCK_S)
    live = splits < num_splits
    part = row * num_splits + splits
    m_i = tl.load(part_stats_ptr + part * 3 + 0, mask=live, other=float("-inf"))
    s_i = tl.load(part_stats_ptr + part * 3 + 1, mask=live, other=0.0)
    t_i = tl.load(part_stats_ptr + part * 3 + 2, mask=live, other=0.0)
    m = tl.max(m_i, axis=0)
    has_mass = s_i > 0.0
    shift = tl.where(m == float("-inf"), 0.0, m)
    m_i = tl.where(has_mass, m_i, shift)  # splits without mass add exact zeros, never NaN
    alpha = tl.where(has_mass, tl.exp(m_i - shift), 0.0)
    s = tl.sum(alpha * s_i, axis=0)
    t = tl.sum(alpha * (t_i + (m_i - shift) * s_i), axis=0)
    flag = tl.max(tl.load(part_flag_ptr + part, mask=live, other=0), axis=0)
    best = tl.max(tl.load(part_best_ptr + part, mask=live, other=KEY_SENTINEL), axis=0)

    slots = tl.arange(0, KP)
    lists = tl.load(
        part_topk_ptr + part[:, None] * KP + slots[None, :],
        mask=live[:, None],
        other=KEY_SENTINEL,
    )
    topk = tl.full((KP,), KEY_SENTINEL, tl.int64)
    for j in tl.static_range(K):
        b = tl.max(tl.max(lists, axis=1), axis=0)
        topk = tl.where(slots == j, b, topk)
        lists = tl.where(lists == b, KEY_SENTINEL, lists)

    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    _finalize(
        row,
        m,
        s,
        t,
        flag,
        topk,
        best,
        row_ptr,
        stride_vocab,
        token_ptr,
        prob_ptr,
        topk_tokens_ptr,
        topk_probs_ptr,
        lse_ptr,
        entropy_ptr,
        K,
        SAMPLE,
    )


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "step", "stream"])
def _noise_kernel(
    out_ptr,
    positions_ptr,
    V,
    seed_lo,
    seed_hi,
    step,
    stream,
    BLOCK_V: tl.constexpr,
    GUMBEL: tl.constexpr,
):
    """The noise of marginals on its own: raw 32-bit words, or the fp32 Gumbel values
    (for the bitwise tests against the reference)."""
    row = tl.program_id(0)
    block_start = tl.program_id(1) * BLOCK_V
    QB: tl.constexpr = BLOCK_V // NOISE_CHUNK
    tile = _vocab_tile(QB)
    position = tl.load(positions_ptr + row).to(tl.uint32)
    words = _noise_words(
        block_start // NOISE_CHUNK,
        position,
        step.to(tl.uint32, bitcast=True),
        stream.to(tl.uint32, bitcast=True),
        seed_lo.to(tl.uint32, bitcast=True),
        seed_hi.to(tl.uint32, bitcast=True),
        QB,
    )
    vocab_id = block_start + tile
    if GUMBEL:
        values = _gumbel_from_uint32(words)
    else:
        values = words.to(tl.int64) & 0xFFFFFFFF
    tl.store(out_ptr + row.to(tl.int64) * V + vocab_id, values, mask=vocab_id < V)


@triton.jit
def _rank_kernel(
    conf_ptr,
    eligible_ptr,
    out_ptr,
    L,
    stride_cg,
    stride_cl,
    stride_eg,
    stride_el,
    IS_F64: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    """rank(i) = #positions ranked before i; out[g, rank(i)] = i."""
    g = tl.program_id(0)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    key_i = _rank_key(
        conf_ptr, eligible_ptr, g, i, L, stride_cg, stride_cl, stride_eg, stride_el, IS_F64
    )
    rank = tl.zeros((BLOCK_I,), tl.int32)
    for j0 in range(0, L, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        key_j = _rank_key(
            conf_ptr, eligible_ptr, g, j, L, stride_cg, stride_cl, stride_eg, stride_el, IS_F64
        )
        before = (key_j[None, :] > key_i[:, None]) | (
            (key_j[None, :] == key_i[:, None]) & (j[None, :] < i[:, None])
        )
        rank += tl.sum((before & (j[None, :] < L)).to(tl.int32), axis=1)
    tl.store(out_ptr + g.to(tl.int64) * L + rank, i.to(tl.int64), mask=i < L)


@triton.jit
def _rank_key(
    conf_ptr,
    eligible_ptr,
    g,
    idx,
    L,
    stride_cg,
    stride_cl,
    stride_eg,
    stride_el,
    IS_F64: tl.constexpr,
):
    """int64 key: order of the confidence (NaN as -inf, -0 == +0), ineligible below all."""
    valid = idx < L
    eligible = (
        tl.load(eligible_ptr + g.to(tl.int64) * stride_eg + idx * stride_el, mask=valid, other=0)
        != 0
    )
    if IS_F64:
        c = tl.load(conf_ptr + g.to(tl.int64) * stride_cg + idx * stride_cl, mask=valid, other=0.0)
        c = tl.where(c != c, float("-inf"), c)
        c = tl.where(c == 0.0, 0.0, c)
        bits = c.to(tl.int64, bitcast=True)
        key = tl.where(bits < 0, bits ^ 0x7FFFFFFFFFFFFFFF, bits)
    else:
        c = tl.load(
            conf_ptr + g.to(tl.int64) * stride_cg + idx * stride_cl, mask=valid, other=0.0
        ).to(tl.float32)
        c = tl.where(c != c, float("-inf"), c)
        key = _ordered_key(c).to(tl.int64)
    return tl.where(eligible, key, KEY_SENTINEL)


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------


def _select_config(num_rows: int, vocab: int) -> dict:
    """Block size, warps and vocabulary split from the shape only (reproducible)."""
    block_v = 2048 if vocab > contract.NOISE_CHUNK else contract.NOISE_CHUNK
    num_blocks = triton.cdiv(vocab, block_v)
    splits = max(1, triton.cdiv(TARGET_PROGRAMS, max(num_rows, 1)))
    splits = max(1, min(splits, num_blocks // MIN_BLOCKS_PER_SPLIT, MAX_SPLITS))
    return {"block_v": block_v, "splits": splits, "num_warps": _select_num_warps(block_v)}


def _select_num_warps(block_v: int) -> int:
    """4 warps at both block sizes: on the H200 sweep (benchmarks/marginals_sweep.py), 4 warps
    at BLOCK_V 2048 were within 1.5% of 8 or faster (up to 1.32x) in every shape with >= 288
    rows, T = 0 and 1."""
    del block_v
    return 4


def _int32_bits(value: int) -> int:
    """A uint32 value as the int32 with the same bits (kernel arguments are i32)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def marginals(logits, *, top_k=1, temperature=0.0, seed=0, step=0, positions=None):
    """Triton `marginals` (same signature and semantics as the reference twin)."""
    return _marginals(logits, top_k, temperature, seed, step, positions)


def _marginals(logits, top_k, temperature, seed, step, positions, *, config=None):
    positions = validate_marginals_args(
        logits, top_k, temperature, seed, step, positions, float64_ok=False
    )
    return launch(logits, positions, top_k, temperature, seed, step, config=config)


def launch(logits, positions, top_k, temperature, seed, step, *, config=None):
    """Launch on checked arguments (`positions` given): reads shapes only, so
    `torch.library.triton_op` can trace it (spiffy_triton.ops)."""
    num_rows, vocab = logits.shape
    device = logits.device
    out = MarginalsOutput(
        token=torch.empty(num_rows, dtype=torch.int64, device=device),
        prob=torch.empty(num_rows, dtype=torch.float32, device=device),
        topk_tokens=torch.empty(num_rows, top_k, dtype=torch.int64, device=device),
        topk_probs=torch.empty(num_rows, top_k, dtype=torch.float32, device=device),
        lse=torch.empty(num_rows, dtype=torch.float32, device=device),
        entropy=torch.empty(num_rows, dtype=torch.float32, device=device),
    )
    if num_rows == 0:
        return out
    config = {**_select_config(num_rows, vocab), **(config or {})}
    block_v = config["block_v"]
    assert block_v % contract.NOISE_CHUNK == 0, "BLOCK_V must be a multiple of the noise chunk"
    num_blocks = triton.cdiv(vocab, block_v)
    blocks_per_split = triton.cdiv(num_blocks, config["splits"])
    splits = triton.cdiv(num_blocks, blocks_per_split)
    kp = triton.next_power_of_2(top_k)
    sample = temperature > 0
    finalize = splits == 1

    part_shape = (num_rows, splits) if not finalize else (1, 1)
    part_stats = torch.empty(*part_shape, 3, dtype=torch.float32, device=device)
    part_flag = torch.empty(part_shape, dtype=torch.int32, device=device)
    part_topk = torch.empty(*part_shape, kp, dtype=torch.int64, device=device)
    part_best = torch.empty(part_shape, dtype=torch.int64, device=device)
    triton_mode.traceable(_marginals_kernel)[(num_rows, splits)](
        logits,
        positions,
        part_stats,
        part_flag,
        part_topk,
        part_best,
        *out,
        vocab,
        logits.stride(0),
        logits.stride(1),
        blocks_per_split,
        splits,
        inverse_temperature(temperature),
        _int32_bits(seed),
        _int32_bits(seed >> 32),
        _int32_bits(step),
        K=top_k,
        KP=kp,
        BLOCK_V=block_v,
        SAMPLE=sample,
        FINALIZE=finalize,
        num_warps=config["num_warps"],
        num_stages=config.get("num_stages", 1),
    )
    if not finalize:
        triton_mode.traceable(_combine_kernel)[(num_rows,)](
            logits,
            part_stats,
            part_flag,
            part_topk,
            part_best,
            *out,
            logits.stride(0),
            logits.stride(1),
            splits,
            K=top_k,
            KP=kp,
            BLOCK_S=triton.next_power_of_2(splits),
            SAMPLE=sample,
            num_warps=1,
        )
    return out


def _noise(seed, step, positions, num_values, stream, gumbel):
    num_rows = positions.shape[0]
    dtype = torch.float32 if gumbel else torch.int64
    out = torch.empty(num_rows, num_values, dtype=dtype, device=positions.device)
    if num_rows and num_values:
        grid = (num_rows, triton.cdiv(num_values, contract.NOISE_CHUNK))
        _noise_kernel[grid](
            out,
            positions.to(torch.int64),
            num_values,
            _int32_bits(seed),
            _int32_bits(seed >> 32),
            _int32_bits(step),
            _int32_bits(stream),
            BLOCK_V=contract.NOISE_CHUNK,
            GUMBEL=gumbel,
            num_warps=4,
        )
    return out


def philox_uint32(seed: int, step: int, positions: torch.Tensor, num_values: int, stream: int = 0):
    """The kernel's 32-bit noise words, int64 [N, V] (twin of reference.philox_uint32)."""
    return _noise(seed, step, positions, num_values, stream, gumbel=False)


def gumbel_noise(seed: int, step: int, positions: torch.Tensor, num_values: int, stream: int = 0):
    """The kernel's fp32 Gumbel noise [N, V] (twin of reference.gumbel_noise)."""
    return _noise(seed, step, positions, num_values, stream, gumbel=True)


def rank_positions(confidence, eligible):
    """Triton `rank_positions` (same semantics as the reference twin)."""
    validate_rank_args(confidence, eligible)
    groups, length = confidence.shape
    out = torch.empty(groups, length, dtype=torch.int64, device=confidence.device)
    if groups == 0 or length == 0:
        return out
    eligible_bytes = eligible.view(torch.uint8)
    block = min(RANK_BLOCK, triton.next_power_of_2(length))
    _rank_kernel[(groups, triton.cdiv(length, block))](
        confidence,
        eligible_bytes,
        out,
        length,
        confidence.stride(0),
        confidence.stride(1),
        eligible_bytes.stride(0),
        eligible_bytes.stride(1),
        IS_F64=confidence.dtype == torch.float64,
        BLOCK_I=block,
        BLOCK_J=block,
        num_warps=4,
    )
    return out


# --------------------------------------------------------------------------------------------
# Shipped configurations (consumed by spiffy_triton/compile_report.py)
# --------------------------------------------------------------------------------------------


def compile_configs() -> list[dict]:
    """One entry per shipped configuration of the marginals kernels.

    The main kernel at BLOCK_V 2048 (every V > 1024) in both modes (argmax / Gumbel) and both
    finishes (fused finalize / split partials) for bf16 at k = 8 (the most registers), k = 1
    for bf16, the other input dtypes at k = 8, and BLOCK_V 1024 (V <= 1024); the combine
    kernel; the rank kernel.
    """
    shipped = [
        ("bf16", 2048, 8, sample, finalize)
        for sample in (False, True)
        for finalize in (True, False)
    ]
    shipped += [("bf16", 2048, 1, False, True), ("bf16", 2048, 1, True, False)]
    shipped += [(dtype, 2048, 8, True, True) for dtype in ("fp16", "fp32")]
    shipped += [(dtype, 2048, 8, False, False) for dtype in ("fp16", "fp32")]
    shipped += [("fp32", contract.NOISE_CHUNK, 8, True, True)]
    # The buffers both kernels take, in their argument order.
    partials_and_outputs = {
        "part_stats_ptr": "*fp32",
        "part_flag_ptr": "*i32",
        "part_topk_ptr": "*i64",
        "part_best_ptr": "*i64",
        "token_ptr": "*i64",
        "prob_ptr": "*fp32",
        "topk_tokens_ptr": "*i64",
        "topk_probs_ptr": "*fp32",
        "lse_ptr": "*fp32",
        "entropy_ptr": "*fp32",
    }
    configs = []
    for dtype, block_v, top_k, sample, finalize in shipped:
        name = (
            f"marginals_{dtype}_v{block_v}_k{top_k}_{'sample' if sample else 'argmax'}_"
            f"{'fused' if finalize else 'split'}"
        )
        configs.append(
            {
                "name": name,
                "kernel": _marginals_kernel,
                "signature": {
                    "logits_ptr": f"*{dtype}",
                    "positions_ptr": "*i64",
                    **partials_and_outputs,
                    "V": "i32",
                    "stride_row": "i32",
                    "stride_vocab": "constexpr",
                    "blocks_per_split": "i32",
                    "num_splits": "i32",
                    "inv_t": "fp32",
                    "seed_lo": "i32",
                    "seed_hi": "i32",
                    "step": "i32",
                    "K": "constexpr",
                    "KP": "constexpr",
                    "BLOCK_V": "constexpr",
                    "SAMPLE": "constexpr",
                    "FINALIZE": "constexpr",
                },
                "constexprs": {
                    "stride_vocab": 1,
                    "K": top_k,
                    "KP": triton.next_power_of_2(top_k),
                    "BLOCK_V": block_v,
                    "SAMPLE": sample,
                    "FINALIZE": finalize,
                },
                "num_warps": _select_num_warps(block_v),
                "num_stages": 1,
                "tensor_cores": False,
                # LLaDA's and Qwen's vocabularies (126464, 152064) are multiples of 16; the JIT
                # specializes on it and the loads vectorize.
                "divisible_by_16": ["V", "stride_row"],
            }
        )
    for top_k in (1, 8):
        for sample in (False, True):
            configs.append(
                {
                    "name": f"marginals_combine_k{top_k}_{'sample' if sample else 'argmax'}",
                    "kernel": _combine_kernel,
                    "signature": {
                        "logits_ptr": "*bf16",
                        **partials_and_outputs,
                        "stride_row": "i32",
                        "stride_vocab": "constexpr",
                        "num_splits": "i32",
                        "K": "constexpr",
                        "KP": "constexpr",
                        "BLOCK_S": "constexpr",
                        "SAMPLE": "constexpr",
                    },
                    "constexprs": {
                        "stride_vocab": 1,
                        "K": top_k,
                        "KP": triton.next_power_of_2(top_k),
                        "BLOCK_S": MAX_SPLITS,
                        "SAMPLE": sample,
                    },
                    "num_warps": 1,
                    "num_stages": 1,
                    "tensor_cores": False,
                }
            )
    for is_f64 in (False, True):
        configs.append(
            {
                "name": f"rank_positions_{'fp64' if is_f64 else 'fp32'}",
                "kernel": _rank_kernel,
                "signature": {
                    "conf_ptr": "*fp64" if is_f64 else "*fp32",
                    "eligible_ptr": "*u8",
                    "out_ptr": "*i64",
                    "L": "i32",
                    "stride_cg": "i32",
                    "stride_cl": "constexpr",
                    "stride_eg": "i32",
                    "stride_el": "constexpr",
                    "IS_F64": "constexpr",
                    "BLOCK_I": "constexpr",
                    "BLOCK_J": "constexpr",
                },
                "constexprs": {
                    "stride_cl": 1,
                    "stride_el": 1,
                    "IS_F64": is_f64,
                    "BLOCK_I": RANK_BLOCK,
                    "BLOCK_J": RANK_BLOCK,
                },
                "num_warps": 4,
                "num_stages": 1,
                "tensor_cores": False,
            }
        )
    return configs
