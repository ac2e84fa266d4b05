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

This file: the kernels, their launchers and `compile_configs()`. The kernels' `@triton.jit`
helpers are in kernels/marginals_helpers.py, the host configuration (launch config from the
shape, the table of shipped configurations) in kernels/marginals_configs.py.
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
from spiffy_triton.kernels.marginals_configs import RANK_BLOCK, shipped_configs
from spiffy_triton.kernels.marginals_configs import select_config as _select_config
from spiffy_triton.kernels.marginals_helpers import (
    KEY_SENTINEL,
    MAX_TOP_K,
    NOISE_CHUNK,
    combine_stats,
    finalize,
    gumbel_from_uint32,
    gumbel_update,
    load_tile,
    merge_topk,
    noise_words,
    rank_key,
    softmax_entropy_update,
    tile_flag,
    topk_update,
    vocab_tile,
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
    """One row's vocabulary range [split]: (m, s, t), flag, top-k and best Gumbel score, then
    the row's outputs (FINALIZE: one split) or the split's partials for `_combine_kernel`."""
    QB: tl.constexpr = BLOCK_V // NOISE_CHUNK
    tl.static_assert(QB * NOISE_CHUNK == BLOCK_V, "a tile is whole noise chunks")
    tl.static_assert(K <= MAX_TOP_K, "top-k fits the KP-slot list of packed keys")
    tl.static_assert((K <= KP) & ((KP & (KP - 1)) == 0), "KP: a power of two >= K")
    row = tl.program_id(0)
    split = tl.program_id(1)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    tile = vocab_tile(QB)
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
        x, clean = load_tile(row_ptr, vocab_id, valid, stride_vocab)
        m, s, t, block_max = softmax_entropy_update(clean, m, s, t)
        block_flag = tile_flag(x)
        flag = tl.maximum(flag, block_flag)
        topk = topk_update(topk, x, vocab_id, valid, block_max, block_flag, slots, K, KP)
        if SAMPLE:
            chunk = block_start // NOISE_CHUNK
            best = gumbel_update(
                best, x, inv_t, vocab_id, valid, chunk, position, step_u, k0, k1, QB
            )

    if FINALIZE:
        outputs = (token_ptr, prob_ptr, topk_tokens_ptr, topk_probs_ptr, lse_ptr, entropy_ptr)
        finalize(row, m, s, t, flag, topk, best, row_ptr, stride_vocab, outputs, K, SAMPLE)
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
    """One row: merges the splits' partials and writes the row's outputs."""
    tl.static_assert((BLOCK_S & (BLOCK_S - 1)) == 0, "BLOCK_S is a power of two")
    row = tl.program_id(0)
    splits = tl.arange(0, BLOCK_S)
    live = splits < num_splits
    part = row * num_splits + splits
    m_i = tl.load(part_stats_ptr + part * 3 + 0, mask=live, other=float("-inf"))
    s_i = tl.load(part_stats_ptr + part * 3 + 1, mask=live, other=0.0)
    t_i = tl.load(part_stats_ptr + part * 3 + 2, mask=live, other=0.0)
    m, s, t = combine_stats(m_i, s_i, t_i)
    flag = tl.max(tl.load(part_flag_ptr + part, mask=live, other=0), axis=0)
    best = tl.max(tl.load(part_best_ptr + part, mask=live, other=KEY_SENTINEL), axis=0)
    slots = tl.arange(0, KP)
    lists_ptr = part_topk_ptr + part[:, None] * KP + slots[None, :]
    lists = tl.load(lists_ptr, mask=live[:, None], other=KEY_SENTINEL)
    topk = merge_topk(lists, slots, K, KP)

    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    outputs = (token_ptr, prob_ptr, topk_tokens_ptr, topk_probs_ptr, lse_ptr, entropy_ptr)
    finalize(row, m, s, t, flag, topk, best, row_ptr, stride_vocab, outputs, K, SAMPLE)


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
    QB: tl.constexpr = BLOCK_V // NOISE_CHUNK
    tl.static_assert(QB * NOISE_CHUNK == BLOCK_V, "a tile is whole noise chunks")
    row = tl.program_id(0)
    block_start = tl.program_id(1) * BLOCK_V
    tile = vocab_tile(QB)
    position = tl.load(positions_ptr + row).to(tl.uint32)
    words = noise_words(
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
        values = gumbel_from_uint32(words)
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
    tl.static_assert((BLOCK_J & (BLOCK_J - 1)) == 0, "BLOCK_J is a power of two")
    g = tl.program_id(0)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    conf_row = conf_ptr + g.to(tl.int64) * stride_cg
    eligible_row = eligible_ptr + g.to(tl.int64) * stride_eg
    key_i = rank_key(conf_row, eligible_row, i, L, stride_cl, stride_el, IS_F64)
    rank = tl.zeros((BLOCK_I,), tl.int32)
    for j0 in range(0, L, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        key_j = rank_key(conf_row, eligible_row, j, L, stride_cl, stride_el, IS_F64)
        before = (key_j[None, :] > key_i[:, None]) | (
            (key_j[None, :] == key_i[:, None]) & (j[None, :] < i[:, None])
        )
        rank += tl.sum((before & (j[None, :] < L)).to(tl.int32), axis=1)
    tl.store(out_ptr + g.to(tl.int64) * L + rank, i.to(tl.int64), mask=i < L)


# --------------------------------------------------------------------------------------------
# Launchers and host-side config selection
# --------------------------------------------------------------------------------------------


def _int32_bits(value: int) -> int:
    """A uint32 value as the int32 with the same bits (kernel arguments are i32)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _noise_keys(seed: int, step: int) -> tuple[int, int, int]:
    """The kernels' (seed_lo, seed_hi, step) arguments."""
    return _int32_bits(seed), _int32_bits(seed >> 32), _int32_bits(step)


def _empty_outputs(num_rows: int, top_k: int, device) -> MarginalsOutput:
    ints = {"dtype": torch.int64, "device": device}
    floats = {"dtype": torch.float32, "device": device}
    return MarginalsOutput(
        token=torch.empty(num_rows, **ints),
        prob=torch.empty(num_rows, **floats),
        topk_tokens=torch.empty(num_rows, top_k, **ints),
        topk_probs=torch.empty(num_rows, top_k, **floats),
        lse=torch.empty(num_rows, **floats),
        entropy=torch.empty(num_rows, **floats),
    )


def _partials(num_rows: int, splits: int, kp: int, device) -> tuple[torch.Tensor, ...]:
    """Per (row, split): (m, s, t), flag, top-k list, best score (a dummy with one split)."""
    shape = (num_rows, splits) if splits > 1 else (1, 1)
    return (
        torch.empty(*shape, 3, dtype=torch.float32, device=device),
        torch.empty(shape, dtype=torch.int32, device=device),
        torch.empty(*shape, kp, dtype=torch.int64, device=device),
        torch.empty(shape, dtype=torch.int64, device=device),
    )


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
    out = _empty_outputs(num_rows, top_k, logits.device)
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
    partials = _partials(num_rows, splits, kp, logits.device)
    triton_mode.traceable(_marginals_kernel)[(num_rows, splits)](
        logits,
        positions,
        *partials,
        *out,
        vocab,
        *logits.stride(),
        blocks_per_split,
        splits,
        inverse_temperature(temperature),
        *_noise_keys(seed, step),
        K=top_k,
        KP=kp,
        BLOCK_V=block_v,
        SAMPLE=sample,
        FINALIZE=splits == 1,
        num_warps=config["num_warps"],
        num_stages=config.get("num_stages", 1),
    )
    if splits > 1:
        triton_mode.traceable(_combine_kernel)[(num_rows,)](
            logits,
            *partials,
            *out,
            *logits.stride(),
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
            *_noise_keys(seed, step),
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
        *confidence.stride(),
        *eligible_bytes.stride(),
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
    """One entry per shipped configuration (the table is kernels/marginals_configs.py)."""
    return shipped_configs(_marginals_kernel, _combine_kernel, _rank_kernel)
