"""What a `SegmentLayout` is made of, checked: the visibility values (`NONE`, `FULL`, `CAUSAL`),
the checks of its constructor's arguments, and `validate_attention_inputs`, the one input check
shared by the Triton kernel and its PyTorch reference, so both raise the same errors.

No project imports but `spiffy_triton.layout` inside `validate_attention_inputs` (which re-exports
every name here): this module sits at the bottom of the module map.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

NONE = 0
FULL = 1
CAUSAL = 2
VISIBILITY_NAMES = {NONE: "NONE", FULL: "FULL", CAUSAL: "CAUSAL"}

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_lengths(lengths: object, name: str) -> tuple[int, ...]:
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


def starts(lengths: tuple[int, ...]) -> tuple[int, ...]:
    starts, total = [], 0
    for length in lengths:
        starts.append(total)
        total += length
    return tuple(starts)


def check_visibility(visibility: object, num_q: int, num_k: int) -> torch.Tensor:
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


def check_key_order(key_order: object, num_k: int) -> tuple[int, ...]:
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
    from .layout import SegmentLayout

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
