"""The `@triton.jit` helpers of the marginals kernels (kernels/marginals.py), one per idea, in
the order the kernels use them: the Philox noise draw, vocabulary tiles, packed top-k keys, one
tile's updates (online softmax with the entropy term, lazy top-k, Gumbel-max), a row's outputs,
the merge of split partials, the rank key. How they fit together: kernels/marginals.py.

A helper module of the marginals family (docs/ARCHITECTURE.md, "Kernel files"): its functions
compile inside the kernels of kernels/marginals.py, whose `compile_configs()` lists them, so
this module's own list is empty.
"""

from __future__ import annotations

import triton
import triton.language as tl

from spiffy_triton import contract

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
KEY_MAX = tl.constexpr(2**63 - 1)  # above every packed key
MAX_TOP_K = tl.constexpr(contract.MAX_TOP_K)
KEY_ID_FLIP = tl.constexpr(contract.MAX_VOCAB)  # a packed key's low word is MAX_VOCAB - id


# --------------------------------------------------------------------------------------------
# The Philox noise draw, tiles, packed keys, one tile's updates, a row's outputs
# --------------------------------------------------------------------------------------------


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
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
def noise_words(chunk_index, position, step, stream, k0, k1, QB: tl.constexpr):
    """The 32-bit words of the vocabulary ids chunk_index * NOISE_CHUNK + the
    [Q, LANES, LANE_SPAN] tile."""
    tl.static_assert(LANES == 4, "a Philox4x32 call gives four words: one lane each")
    q = tl.arange(0, QB)[:, None, None]
    lane = tl.arange(0, LANES)[None, :, None]
    i = tl.arange(0, LANE_SPAN)[None, None, :]
    counter0 = ((chunk_index + q) * LANE_SPAN + i).to(tl.uint32)
    w0, w1, w2, w3 = philox4x32_10(counter0, position, step, stream, k0, k1)
    return tl.where(lane == 0, w0, tl.where(lane == 1, w1, tl.where(lane == 2, w2, w3)))


@triton.jit
def gumbel_from_uint32(bits):
    """Standard Gumbel noise (fp32) from uint32 words; mirrors reference gumbel_from_uint32."""
    upper = bits >= 0x80000000
    source = tl.where(upper, bits ^ 0xFFFFFFFF, bits).to(tl.float32)
    v = (source + 0.5) * TWO_POW_M32
    series = v * (1.0 + v * (0.5 + v * (0.3333333333333333 + v * 0.25)))
    exp_upper = tl.where(v < SERIES_CUTOFF, series, -tl.log(1.0 - v))
    exponential = tl.where(upper, exp_upper, -tl.log(v))
    return -tl.log(exponential)


@triton.jit
def vocab_tile(QB: tl.constexpr):
    """Offsets of a [QB, LANES, LANE_SPAN] tile of contiguous vocabulary ids (the Philox lane
    layout)."""
    return (
        tl.arange(0, QB)[:, None, None] * NOISE_CHUNK
        + tl.arange(0, LANES)[None, :, None] * LANE_SPAN
        + tl.arange(0, LANE_SPAN)[None, None, :]
    )


@triton.jit
def tile_max(x):
    """Max of a [Q, 4, 256] tile, reduced axis by axis."""
    return tl.max(tl.max(tl.max(x, axis=2), axis=1), axis=0)


@triton.jit
def tile_sum(x):
    """Sum of a [Q, 4, 256] tile, reduced axis by axis."""
    return tl.sum(tl.sum(tl.sum(x, axis=2), axis=1), axis=0)


@triton.jit
def ordered_key(x):
    """int32 with the order of the fp32 values: -0 == +0, every NaN above +inf."""
    x = tl.where(x == 0.0, 0.0, x)
    bits = x.to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return tl.where(x != x, 0x7FFFFFFF, key)


@triton.jit
def key_value(packed):
    """The fp32 value in the high word of a packed key."""
    key = (packed >> 32).to(tl.int32)
    bits = tl.where(key < 0, key ^ 0x7FFFFFFF, key)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def id_word(vocab_id):
    """``MAX_VOCAB - id``, the low word of a packed key (so ties go to the lowest id); an
    involution, so it also reads the id back. Written tensor first: the interpreter would wrap
    ``constexpr - tensor`` in a constexpr."""
    return -(vocab_id - KEY_ID_FLIP)


@triton.jit
def key_id(packed):
    return id_word(packed.to(tl.int32))


@triton.jit
def pack(key, vocab_id, valid):
    packed = (key.to(tl.int64) << 32) | id_word(vocab_id).to(tl.int64)
    return tl.where(valid, packed, KEY_SENTINEL)


@triton.jit
def insert(topk, candidate, slots, K: tl.constexpr, KP: tl.constexpr):
    """Replace the smallest of the first K slots by `candidate` when it is larger."""
    live = tl.where(slots < K, topk, KEY_MAX)
    smallest = tl.min(live, axis=0)
    slot = tl.min(tl.where(live == smallest, slots, KP), axis=0)
    return tl.where((slots == slot) & (candidate > smallest), candidate, topk)


@triton.jit
def load_tile(row_ptr, vocab_id, valid, stride_vocab):
    """One tile of the row in fp32 (-inf past V), and the tile without NaN / +inf (as -inf)."""
    x = tl.load(row_ptr + vocab_id.to(tl.int64) * stride_vocab, mask=valid, other=float("-inf"))
    x = x.to(tl.float32)
    clean = tl.where((x != x) | (x == float("inf")), float("-inf"), x)
    return x, clean


@triton.jit
def tile_flag(x):
    """2 if the tile holds a NaN, else 1 if it holds +inf, else 0."""
    return tile_max(tl.where(x != x, 2, tl.where(x == float("inf"), 1, 0)))


@triton.jit
def softmax_entropy_update(clean, m, s, t):
    """Online softmax over one tile, carrying the entropy term t = sum e^(x - m) (x - m):
    the new (m, s, t) and the tile's max."""
    block_max = tile_max(clean)
    new_m = tl.maximum(m, block_max)
    shift = tl.where(new_m == float("-inf"), 0.0, new_m)
    diff = clean - shift
    e = tl.exp(diff)
    te = e * tl.maximum(diff, -3.4e38)  # e == 0 where diff == -inf
    alpha = tl.exp(m - shift)
    old_m = tl.where(s > 0.0, m, shift)  # keeps -inf * 0 out of the rescale
    t = alpha * (t + (old_m - shift) * s) + tile_sum(te)
    s = alpha * s + tile_sum(e)
    return new_m, s, t, block_max


@triton.jit
def topk_update(
    topk, x, vocab_id, valid, block_max, block_flag, slots, K: tl.constexpr, KP: tl.constexpr
):
    """Lazy top-k: the tile is searched only when its max beats the current k-th key (or it
    holds NaN / +inf); then every tile key above the k-th is inserted, largest first."""
    kth = tl.min(tl.where(slots < K, topk, KEY_MAX), axis=0)
    if (ordered_key(block_max) > (kth >> 32).to(tl.int32)) | (block_flag > 0):
        packed = pack(ordered_key(x), vocab_id, valid)
        count = tile_sum((packed > kth).to(tl.int32))
        for _ in range(tl.minimum(count, K)):
            b = tile_max(packed)
            topk = insert(topk, b, slots, K, KP)
            packed = tl.where(packed == b, KEY_SENTINEL, packed)
    return topk


@triton.jit
def gumbel_update(
    best, x, inv_t, vocab_id, valid, chunk_index, position, step, k0, k1, QB: tl.constexpr
):
    """Gumbel-max over one tile: the larger of `best` and the tile's best packed score of
    x / T + Gumbel noise keyed by (seed = (k0, k1), step, position, vocabulary id)."""
    words = noise_words(chunk_index, position, step, GUMBEL_STREAM, k0, k1, QB)
    score = x * inv_t + gumbel_from_uint32(words)
    packed_score = pack(ordered_key(score), vocab_id, valid)
    return tl.maximum(best, tile_max(packed_score))


@triton.jit
def lse_entropy(m, s, t, flag):
    """log-sum-exp and entropy from the reduced (m, s, t) and flag (2 NaN, 1 +inf, 0 clean)."""
    has_mass = s > 0.0
    safe_s = tl.where(has_mass, s, 1.0)
    log_s = tl.log(safe_s)
    lse = tl.where(has_mass, m + log_s, float("-inf"))
    entropy = tl.where(has_mass, log_s - t / safe_s, 0.0)
    lse = tl.where(flag == 2, float("nan"), tl.where(flag == 1, float("inf"), lse))
    entropy = tl.where(flag > 0, float("nan"), entropy)
    return lse, entropy


@triton.jit
def finalize(
    row,
    m,
    s,
    t,
    flag,
    topk,
    best,
    row_ptr,
    stride_vocab,
    outputs,
    K: tl.constexpr,
    SAMPLE: tl.constexpr,
):
    """Write one row's outputs from its reduced statistics; `outputs` holds the pointers
    (token, prob, topk_tokens, topk_probs, lse, entropy)."""
    token_ptr, prob_ptr, topk_tokens_ptr, topk_probs_ptr, lse_ptr, entropy_ptr = outputs
    lse, entropy = lse_entropy(m, s, t, flag)
    tl.store(lse_ptr + row, lse)
    tl.store(entropy_ptr + row, entropy)
    safe_lse = tl.where((flag > 0) | (lse == float("-inf")), 0.0, lse)  # no inf - inf below

    top_token = tl.zeros((), tl.int64)
    top_prob = tl.zeros((), tl.float32)
    for j in tl.static_range(K):
        b = tl.max(topk, axis=0)
        topk = tl.where(topk == b, KEY_SENTINEL, topk)
        real = b != KEY_SENTINEL  # slots past V stay empty
        p = tl.exp(key_value(b) - safe_lse)
        p = tl.where(lse == float("-inf"), 0.0, p)
        p = tl.where(flag > 0, float("nan"), p)
        p = tl.where(real, p, 0.0)
        token = tl.where(real, key_id(b), -1).to(tl.int64)
        tl.store(topk_tokens_ptr + row * K + j, token)
        tl.store(topk_probs_ptr + row * K + j, p)
        if j == 0:
            top_token = token
            top_prob = p
    if SAMPLE:
        token = key_id(best).to(tl.int64)
        x = tl.load(row_ptr + token * stride_vocab).to(tl.float32)
        p = tl.where(lse == float("-inf"), 0.0, tl.exp(x - safe_lse))
        top_prob = tl.where(flag > 0, float("nan"), p)
        top_token = token
    tl.store(token_ptr + row, top_token)
    tl.store(prob_ptr + row, top_prob)


@triton.jit
def combine_stats(m_i, s_i, t_i):
    """The row's (m, s, t) from the splits' partial ones."""
    m = tl.max(m_i, axis=0)
    has_mass = s_i > 0.0
    shift = tl.where(m == float("-inf"), 0.0, m)
    m_i = tl.where(has_mass, m_i, shift)  # splits without mass add exact zeros, never NaN
    alpha = tl.where(has_mass, tl.exp(m_i - shift), 0.0)
    s = tl.sum(alpha * s_i, axis=0)
    t = tl.sum(alpha * (t_i + (m_i - shift) * s_i), axis=0)
    return m, s, t


@triton.jit
def merge_topk(lists, slots, K: tl.constexpr, KP: tl.constexpr):
    """The K largest keys of the splits' top-k lists [S, KP], in KP slots."""
    topk = tl.full((KP,), KEY_SENTINEL, tl.int64)
    for j in tl.static_range(K):
        b = tl.max(tl.max(lists, axis=1), axis=0)
        topk = tl.where(slots == j, b, topk)
        lists = tl.where(lists == b, KEY_SENTINEL, lists)
    return topk


@triton.jit
def rank_key(conf_row, eligible_row, idx, L, stride_cl, stride_el, IS_F64: tl.constexpr):
    """int64 key: order of the confidence (NaN as -inf, -0 == +0), ineligible below all."""
    valid = idx < L
    eligible = tl.load(eligible_row + idx * stride_el, mask=valid, other=0) != 0
    if IS_F64:
        c = tl.load(conf_row + idx * stride_cl, mask=valid, other=0.0)
        c = tl.where(c != c, float("-inf"), c)
        c = tl.where(c == 0.0, 0.0, c)
        bits = c.to(tl.int64, bitcast=True)
        key = tl.where(bits < 0, bits ^ 0x7FFFFFFFFFFFFFFF, bits)
    else:
        c = tl.load(conf_row + idx * stride_cl, mask=valid, other=0.0).to(tl.float32)
        c = tl.where(c != c, float("-inf"), c)
        key = ordered_key(c).to(tl.int64)
    return tl.where(eligible, key, KEY_SENTINEL)


def compile_configs() -> list[dict]:
    """None of its own: the helpers are compiled in kernels/marginals.py's configurations."""
    return []
