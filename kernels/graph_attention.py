"""Graph-masked bidirectional attention (forward) in Triton, driven by a `SegmentLayout`.

One program computes one query tile of one head group. The layout's tile schedule (computed
once per layout on the host, see `SegmentLayout.schedule`) lists, per query tile, the key tiles
that some row of the tile can see, in the order every row must visit them; tiles no row can see
are never loaded, and fully visible tiles skip element masking. Key tiles are aligned to key
segment starts, so the tiles a draft's rows visit (and the values inside them) are the same
whether the draft is evaluated alone or packed beside others; tiles a row cannot see add exact
zeros (p = 0, rescale factor exactly 1), so each row's result is independent of its neighbours.
Shared context (prefix, suffix, cache) tiles are loaded once per query tile, for all the drafts
the tile holds.

GQA: the ``HEADS_PER_TILE`` query heads that share one key/value head are packed into the rows
of one tile (virtual row = query row * HEADS_PER_TILE + head), so 32-row drafts still fill a
128-row tile and each K/V tile is read once for those heads.

Numerics: inputs are fp16 / bf16 / fp32, the softmax and the accumulators are fp32. Dots take
the input dtype on the GPU (tensor cores; P is rounded to the input dtype as in
FlashAttention). fp32 inputs use TF32 tensor cores only when
``torch.get_float32_matmul_precision()`` is not ``"highest"`` (PyTorch's own switch), IEEE fp32
otherwise. Under the Triton interpreter bf16 operands are widened to fp32 after the same
rounding, because the interpreter cannot multiply bf16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from spiffy_triton import layout as layout_contract
from spiffy_triton import triton_mode
from spiffy_triton.layout import ENTRY_FIELDS, SegmentLayout, validate_attention_inputs

__all__ = ["graph_attention", "KernelConfig", "select_config", "compile_configs"]

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128
LOG2E = 1.4426950408889634

# The layout's contract as compile-time globals (spiffy_triton/layout.py): the columns of a
# tile schedule entry and the visibility kinds, read by name.
ENTRY_K_START = tl.constexpr(layout_contract.ENTRY_K_START)
ENTRY_K_END = tl.constexpr(layout_contract.ENTRY_K_END)
ENTRY_K_SEGMENT = tl.constexpr(layout_contract.ENTRY_K_SEGMENT)
ENTRY_K_SEGMENT_START = tl.constexpr(layout_contract.ENTRY_K_SEGMENT_START)
ENTRY_MASKED = tl.constexpr(layout_contract.ENTRY_MASKED)
FULL = tl.constexpr(layout_contract.FULL)
CAUSAL = tl.constexpr(layout_contract.CAUSAL)
LN2 = tl.constexpr(0.6931471805599453)  # the natural log of 2: lse from log2 units


# --------------------------------------------------------------------------------------------
# Kernel helpers
# --------------------------------------------------------------------------------------------


@triton.jit
def _row_ptrs(base, batch, heads, rows, offs_d, stride_b, stride_h, stride_m, stride_d):
    """Pointers of a [BLOCK_M, BLOCK_D] tile of query / output rows (virtual row -> row, head)."""
    return (
        base
        + batch.to(tl.int64) * stride_b
        + heads[:, None].to(tl.int64) * stride_h
        + rows[:, None].to(tl.int64) * stride_m
        + offs_d[None, :] * stride_d
    )


@triton.jit
def _load_kv_tile(base, k_start, offs_n, offs_d, strides, kv_mask):
    """A [BLOCK_N, BLOCK_D] tile of keys or values from key row k_start on (zeros past k_end);
    strides = (row, d)."""
    stride_n, stride_d = strides
    ptrs = base + k_start.to(tl.int64) * stride_n
    return tl.load(
        ptrs + offs_n[:, None] * stride_n + offs_d[None, :] * stride_d, mask=kv_mask, other=0.0
    )


@triton.jit
def _mask_scores(scores, relation, key_offset, col_valid, q_offset):
    """The masked stage: a key tile lies inside one key segment, so each row has one visibility
    value (FULL, or CAUSAL: keys up to the row's own offset in the segment); -inf elsewhere."""
    visible = (relation[:, None] == FULL) | (
        (relation[:, None] == CAUSAL) & (key_offset[None, :] <= q_offset[:, None])
    )
    return tl.where(visible & col_valid[None, :], scores, float("-inf"))


@triton.jit
def _attn_fwd_tile(
    acc,
    l_i,
    m_i,
    q,
    q_offset,
    visibility_row,
    k_base,
    v_base,
    entry,
    k_strides,
    v_strides,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """One key tile of the schedule (the tutorial's `_attn_fwd_inner`, one step): scores, the
    masked stage for entries marked masked (FULL tiles skip it), the online softmax update and
    P @ V. `entry` = (k_start, k_end, masked, key segment, its first key row). The
    stages interleave in the schedule's order, never as two loops: the order of a row's tiles
    is part of the bitwise contract (module docstring)."""
    k_start, k_end, masked, k_segment, k_segment_start = entry
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    cols = k_start + offs_n
    col_valid = cols < k_end
    # masks on d only when head_dim is padded to BLOCK_D (keeps [BN, BD] masks out of registers)
    if BLOCK_D == HEAD_DIM:
        kv_mask = col_valid[:, None]
    else:
        kv_mask = col_valid[:, None] & (offs_d < HEAD_DIM)[None, :]
    k = _load_kv_tile(k_base, k_start, offs_n, offs_d, k_strides, kv_mask)
    if DOT_IN_FP32:
        k = k.to(tl.float32)
    scores = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale
    if masked != 0:
        relation = tl.load(visibility_row + k_segment)
        scores = _mask_scores(scores, relation, cols - k_segment_start, col_valid, q_offset)

    m_new = tl.maximum(m_i, tl.max(scores, 1))
    # rows that have seen no key yet keep m = -inf; shift by 0 so exp2 gives 0, not NaN
    m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_shift)
    p = tl.math.exp2(scores - m_shift[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]

    v = _load_kv_tile(v_base, k_start, offs_n, offs_d, v_strides, kv_mask)
    if DOT_IN_FP32:
        p_op = p.to(v_base.dtype.element_ty).to(tl.float32)
        acc = tl.dot(p_op, v.to(tl.float32), acc, input_precision=INPUT_PRECISION)
    else:
        acc = tl.dot(p.to(v_base.dtype.element_ty), v, acc, input_precision=INPUT_PRECISION)
    return acc, l_i, m_new


# --------------------------------------------------------------------------------------------
# Kernel
# --------------------------------------------------------------------------------------------


@triton.jit
def _graph_attention_fwd(
    Q,
    K,
    V,
    Out,
    Lse,
    TileOffsets,
    Entries,
    RowSegment,
    RowOffset,
    Visibility,
    qk_scale,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    num_q_rows,
    num_k_segments,
    num_head_groups,
    GROUP: tl.constexpr,
    HEADS_PER_TILE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ENTRY_STRIDE: tl.constexpr,
    RETURN_LSE: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """One query tile of one head group: its query rows, the key tiles of its schedule entries
    in order (`_attn_fwd_tile`), then the output rows and their log-sum-exp."""
    tl.static_assert(BLOCK_D >= HEAD_DIM, "BLOCK_D holds a head")
    tl.static_assert(BLOCK_M % HEADS_PER_TILE == 0, "a tile holds whole query rows")
    tl.static_assert((BLOCK_N & (BLOCK_N - 1)) == 0, "BLOCK_N is a power of two")
    tile = tl.program_id(0)
    batch_head = tl.program_id(1)
    batch = batch_head // num_head_groups
    first_head = (batch_head % num_head_groups) * HEADS_PER_TILE
    kv_head = first_head // GROUP

    # virtual row v of the tile = query row (v // HEADS_PER_TILE) of head first_head + v % HPT
    virtual = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = virtual // HEADS_PER_TILE
    heads = first_head + virtual % HEADS_PER_TILE
    row_valid = rows < num_q_rows
    offs_d = tl.arange(0, BLOCK_D)
    d_valid = offs_d < HEAD_DIM

    q_ptrs = _row_ptrs(Q, batch, heads, rows, offs_d, stride_qb, stride_qh, stride_qm, stride_qd)
    # masks on d only when head_dim is padded to BLOCK_D (keeps [BM, BD] masks out of registers)
    if BLOCK_D == HEAD_DIM:
        q_mask = row_valid[:, None]
    else:
        q_mask = row_valid[:, None] & d_valid[None, :]
    q = tl.load(q_ptrs, mask=q_mask, other=0.0)
    if DOT_IN_FP32:
        q = q.to(tl.float32)
    # element masks need each row's segment and its offset inside the segment
    q_segment = tl.load(RowSegment + rows, mask=row_valid, other=0)
    q_offset = tl.load(RowOffset + rows, mask=row_valid, other=0)
    visibility_row = Visibility + q_segment * num_k_segments

    k_base = K + batch.to(tl.int64) * stride_kb + kv_head.to(tl.int64) * stride_kh
    v_base = V + batch.to(tl.int64) * stride_vb + kv_head.to(tl.int64) * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    entry_begin = tl.load(TileOffsets + tile)
    entry_end = tl.load(TileOffsets + tile + 1)
    for entry in range(entry_begin, entry_end):
        fields = Entries + entry * ENTRY_STRIDE
        k_start = tl.load(fields + ENTRY_K_START)
        k_end = tl.load(fields + ENTRY_K_END)
        k_segment = tl.load(fields + ENTRY_K_SEGMENT)
        k_segment_start = tl.load(fields + ENTRY_K_SEGMENT_START)
        masked = tl.load(fields + ENTRY_MASKED)
        entry = (k_start, k_end, masked, k_segment, k_segment_start)
        acc, l_i, m_i = _attn_fwd_tile(
            acc,
            l_i,
            m_i,
            q,
            q_offset,
            visibility_row,
            k_base,
            v_base,
            entry,
            (stride_kn, stride_kd),
            (stride_vn, stride_vd),
            qk_scale,
            HEAD_DIM,
            BLOCK_N,
            BLOCK_D,
            DOT_IN_FP32,
            INPUT_PRECISION,
        )

    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    o_ptrs = _row_ptrs(Out, batch, heads, rows, offs_d, stride_ob, stride_oh, stride_om, stride_od)
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=q_mask)
    if RETURN_LSE:
        lse = tl.where(seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) * LN2, float("-inf"))
        # lse is a contiguous [B, Hq, Mq] buffer
        q_heads = num_head_groups * HEADS_PER_TILE
        lse_ptrs = Lse + (batch.to(tl.int64) * q_heads + heads) * num_q_rows + rows
        tl.store(lse_ptrs, lse, mask=row_valid)


# --------------------------------------------------------------------------------------------
# Launcher and host-side config selection
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch parameters (query rows per tile = block_m // heads_per_tile)."""

    block_m: int
    block_n: int
    heads_per_tile: int
    num_warps: int
    num_stages: int


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def _heads_per_tile(group: int) -> int:
    """Largest power of two dividing the GQA group, at most 8 (>= 16 query rows per tile)."""
    heads = 1
    while heads < 8 and group % (heads * 2) == 0:
        heads *= 2
    return heads


def select_config(head_dim: int, dtype: torch.dtype, num_q_rows: int, group: int) -> KernelConfig:
    """The launch configuration, a pure function of the shapes (no autotuning).

    Pruning rule: ``block_n`` depends only on (head_dim, dtype), so a draft's key tiles never
    change with the number of drafts packed; ``block_m`` is 64 when the packed virtual rows
    fit in 64, else 128; fp32 keeps to 64 x 32 tiles (fp32 tiles are twice the bytes and
    registers of fp16 ones; larger ones spill on sm_80). ``num_warps`` is chosen so that no
    shipped config spills on sm_90 or sm_80 (checked by `spiffy_triton.compile_report`).
    """
    heads_per_tile = _heads_per_tile(group)
    virtual_rows = num_q_rows * heads_per_tile
    block_d = _block_d(head_dim)
    if dtype == torch.float32:
        block_m, block_n = 64, 32
    else:
        block_m = 64 if virtual_rows <= 64 else 128
        block_n = 64
    # 8 warps keep d=128 and fp32 tiles under 255 registers without spills (sm_90 ptxas -v)
    num_warps = 4 if block_m == 64 and block_d <= 64 and dtype != torch.float32 else 8
    num_stages = 2 if block_d > 64 or dtype == torch.float32 else 3
    return KernelConfig(block_m, block_n, heads_per_tile, num_warps, num_stages)


def _input_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _forward(q, k, v, layout: SegmentLayout, scale: float, return_lse: bool, config: KernelConfig):
    schedule = layout.schedule(config.block_m // config.heads_per_tile, config.block_n, q.device)
    out, lse = launch(q, k, v, schedule, layout.num_k_segments, scale, return_lse, config)
    return (out, lse) if return_lse else out


def launch(q, k, v, schedule, num_k_segments: int, scale: float, return_lse: bool, config):
    """Launch the kernel over a tile `schedule` built for `config`: only shapes and tensors are
    read here (no layout values), so `torch.library.triton_op` can trace it (spiffy_triton.ops).
    Returns ``(out, lse)``; ``lse`` is a ``(1,)`` placeholder unless `return_lse`."""
    batch, q_heads, q_rows, head_dim = q.shape
    group = q_heads // k.shape[1]
    if group % config.heads_per_tile != 0 or config.block_m % config.heads_per_tile != 0:
        raise ValueError(
            f"graph_attention: config {config} does not fit GQA group {group} "
            f"(heads_per_tile must divide the group and block_m)"
        )
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse_shape = (batch, q_heads, q_rows) if return_lse else (1,)
    lse = torch.empty(lse_shape, dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    num_head_groups = q_heads // config.heads_per_tile
    grid = (schedule.tile_offsets.shape[0] - 1, batch * num_head_groups)
    triton_mode.traceable(_graph_attention_fwd)[grid](
        q,
        k,
        v,
        out,
        lse,
        schedule.tile_offsets,
        schedule.entries,
        schedule.row_segment,
        schedule.row_offset,
        schedule.visibility,
        scale * LOG2E,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *out.stride(),
        q_rows,
        num_k_segments,
        num_head_groups,
        GROUP=group,
        HEADS_PER_TILE=config.heads_per_tile,
        HEAD_DIM=head_dim,
        BLOCK_D=_block_d(head_dim),
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        ENTRY_STRIDE=ENTRY_FIELDS,
        RETURN_LSE=return_lse,
        DOT_IN_FP32=triton_mode.interpreter_enabled() and q.dtype == torch.bfloat16,
        INPUT_PRECISION=_input_precision(q.dtype),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out, lse


def check_kernel_inputs(q, k, v, layout, scale, return_lse) -> float:
    """The shared checks plus what only the kernel restricts (dtype, head_dim)."""
    scale = validate_attention_inputs(q, k, v, layout, scale, return_lse)
    if q.dtype not in KERNEL_DTYPES:
        raise TypeError(
            f"graph_attention: the Triton kernel takes float16, bfloat16 or float32, got "
            f"{q.dtype}; use backend='torch' for {q.dtype}"
        )
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(
            f"graph_attention: the Triton kernel takes head_dim <= {MAX_HEAD_DIM}, got "
            f"{q.shape[-1]}; use backend='torch'"
        )
    return scale


def graph_attention(q, k, v, layout, *, scale=None, return_lse=False):
    """Softmax attention of ``q [B, Hq, Mq, d]`` over ``k, v [B, Hkv, Mk, d]`` under `layout`.

    Same contract as `spiffy_triton.reference.graph_attention.graph_attention`: query head
    ``h`` reads key/value head ``h // (Hq // Hkv)``; ``scale`` defaults to ``1 / sqrt(d)``;
    returns ``o`` in q's dtype and with ``return_lse`` also ``lse [B, Hq, Mq]`` (float32,
    natural log). Rows that see no key give zeros and ``lse = -inf``. Any strides.
    """
    scale = check_kernel_inputs(q, k, v, layout, scale, return_lse)
    config = select_config(q.shape[-1], q.dtype, q.shape[2], q.shape[1] // k.shape[1])
    return _forward(q, k, v, layout, scale, return_lse, config)


# --------------------------------------------------------------------------------------------
# Shipped configurations (consumed by spiffy_triton/compile_report.py)
# --------------------------------------------------------------------------------------------

_TRITON_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def compile_configs() -> list[dict]:
    """Every shipped configuration (head_dim 64/128 x fp16/bf16/fp32 x block_m 64/128)."""
    configs = []
    for head_dim in (64, 128):
        for dtype, name in _TRITON_DTYPES.items():
            precisions = ("tf32", "ieee") if dtype == torch.float32 else ("ieee",)
            row_counts = sorted(
                {select_config(head_dim, dtype, rows, 1) for rows in (32, 4096)},
                key=lambda c: c.block_m,
            )
            for config in row_counts:
                for precision in precisions:
                    for heads_per_tile in (1, 4) if head_dim == 128 and name == "bf16" else (1,):
                        configs.append(
                            _compile_entry(head_dim, name, config, precision, heads_per_tile)
                        )
    return configs


def _compile_entry(head_dim, dtype_name, config, precision, heads_per_tile):
    # what a launch on contiguous-last-dim tensors compiles: unit d strides, others % 16 == 0
    pointers = dict.fromkeys(["Q", "K", "V", "Out"], f"*{dtype_name}")
    schedule = dict.fromkeys(["TileOffsets", "Entries", "RowSegment", "RowOffset", "Visibility"])
    signature = {**pointers, "Lse": "*fp32", **dict.fromkeys(schedule, "*i32"), "qk_scale": "fp32"}
    unit_strides, aligned_strides = {}, []
    for tensor in "qkvo":
        for dim in "bh" + ("m" if tensor in "qo" else "n"):
            signature[f"stride_{tensor}{dim}"] = "i32"
            aligned_strides.append(f"stride_{tensor}{dim}")
        signature[f"stride_{tensor}d"] = "constexpr"
        unit_strides[f"stride_{tensor}d"] = 1
    signature.update(num_q_rows="i32", num_k_segments="i32", num_head_groups="i32")
    constexprs = {
        "GROUP": heads_per_tile,
        "HEADS_PER_TILE": heads_per_tile,
        "HEAD_DIM": head_dim,
        "BLOCK_D": _block_d(head_dim),
        "BLOCK_M": config.block_m,
        "BLOCK_N": config.block_n,
        "ENTRY_STRIDE": ENTRY_FIELDS,
        "RETURN_LSE": True,
        "DOT_IN_FP32": False,
        "INPUT_PRECISION": precision,
    }
    signature.update(dict.fromkeys(constexprs, "constexpr"))
    constexprs.update(unit_strides)
    suffix = f"_{precision}" if dtype_name == "fp32" else ""
    return {
        "name": (
            f"graph_attention_fwd_d{head_dim}_{dtype_name}{suffix}_m{config.block_m}"
            f"_n{config.block_n}_g{heads_per_tile}"
        ),
        "kernel": _graph_attention_fwd,
        "signature": signature,
        "constexprs": constexprs,
        "num_warps": config.num_warps,
        "num_stages": config.num_stages,
        "tensor_cores": not (dtype_name == "fp32" and precision == "ieee"),
        "divisible_by_16": aligned_strides,
    }


def flops(layout: SegmentLayout, batch: int, q_heads: int, head_dim: int) -> int:
    """Useful FLOPs: 4 * d per visible (query, key) pair per head (QK^T and PV)."""
    return 4 * head_dim * layout.num_visible_pairs() * batch * q_heads
