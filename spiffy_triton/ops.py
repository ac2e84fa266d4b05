"""The two kernels as torch.library custom ops: ``torch.ops.spiffy.graph_attention`` and
``torch.ops.spiffy.marginals`` (docs/INTEGRATION.md, "torch custom ops").

A custom op is opaque to ``torch.compile``: the compiled graph calls it as one node (no graph
break), and its fake implementation gives the output shapes without running it. Each op takes
``backend`` (``"auto"``, ``"triton"``, ``"torch"``) and runs `spiffy_triton.dispatch`, so the
Triton kernel and the PyTorch reference sit behind the same op.

The `SegmentLayout` is a Python object, which an op cannot take: it crosses the op boundary as
its four small tensors (`SegmentLayout.to_tensors`: segment lengths, the visibility matrix and
the key order, O(segments) bytes) and is rebuilt inside (`SegmentLayout.from_tensors`; the
tile schedule stays cached per layout). The attention op always returns ``(out, lse)``;
`graph_attention_op` returns what ``return_lse`` asks for. A seed crosses as a signed int64
(two's complement of the unsigned 64-bit seed).

Why `torch.library.custom_op` and not `triton_op` for the Triton path: a `triton_op`'s body is
traced by ``torch.compile``, so everything before the kernel launch must be traceable. The
attention launcher builds its tile schedule on the host from the layout's values (data, not
shapes), which a trace cannot read; the marginals launcher is shape-only but its kernels are
launched directly (``wrap_triton`` is needed for a traced launch, and in the Triton interpreter
used on CPU, ``triton.jit`` gives an ``InterpretedFunction`` that ``wrap_triton`` refuses). Both
ops therefore stay opaque custom ops on every backend.

Example::

    import torch
    from spiffy_triton import SegmentLayout, graph_attention_op

    layout = SegmentLayout.spiffy(prefix_len=4, block_len=4, suffix_len=0, num_drafts=2)
    q = k = v = torch.randn(1, 2, layout.num_q_rows, 8)
    out = graph_attention_op(q, k, v, layout, backend="torch")  # torch.ops.spiffy.graph_attention
"""

from __future__ import annotations

import torch

from . import dispatch
from .layout import SegmentLayout, validate_attention_inputs
from .types import MarginalsOutput

__all__ = ["graph_attention_op", "marginals_op"]

_SEED_SPAN = 2**64
_SEED_SIGN = 2**63


# ---------------------------------------------------------------------------- graph attention


@torch.library.custom_op("spiffy::graph_attention", mutates_args=())
def _graph_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_lengths: torch.Tensor,
    k_lengths: torch.Tensor,
    visibility: torch.Tensor,
    key_order: torch.Tensor,
    scale: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    layout = SegmentLayout.from_tensors(q_lengths, k_lengths, visibility, key_order)
    out, lse = dispatch.graph_attention(
        q, k, v, layout, scale=scale, return_lse=True, backend=backend
    )
    return out, lse


@_graph_attention.register_fake
def _(q, k, v, q_lengths, k_lengths, visibility, key_order, scale, backend):
    batch, heads, rows, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(
        (batch, heads, rows), dtype=torch.float32
    )


def graph_attention_op(q, k, v, layout, *, scale=None, return_lse=False, backend="auto"):
    """`spiffy_triton.graph_attention` through the custom op ``torch.ops.spiffy.graph_attention``
    (same arguments and results; traceable by ``torch.compile(fullgraph=True)``).

    >>> layout = SegmentLayout.full(4)
    >>> q = torch.ones(1, 1, 4, 2)
    >>> graph_attention_op(q, q, q, layout, backend="torch").shape
    torch.Size([1, 1, 4, 2])
    """
    scale = validate_attention_inputs(q, k, v, layout, scale, return_lse)
    dispatch.resolve_backend(backend, {"q": q, "k": k, "v": v}, "graph_attention")
    out, lse = torch.ops.spiffy.graph_attention(q, k, v, *layout.to_tensors(), scale, backend)
    return (out, lse) if return_lse else out


# ---------------------------------------------------------------------------- marginals


@torch.library.custom_op("spiffy::marginals", mutates_args=())
def _marginals(
    logits: torch.Tensor,
    positions: torch.Tensor | None,
    top_k: int,
    temperature: float,
    seed: int,
    step: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    result = dispatch.marginals(
        logits,
        top_k=top_k,
        temperature=temperature,
        seed=seed % _SEED_SPAN,
        step=step,
        positions=positions,
        backend=backend,
    )
    # Fresh, contiguous outputs: a custom op may not return views of its inputs or each other.
    return tuple(
        t if t._base is None else t.clone(memory_format=torch.contiguous_format) for t in result
    )


@_marginals.register_fake
def _(logits, positions, top_k, temperature, seed, step, backend):
    rows = logits.shape[0]
    f32, i64 = torch.float32, torch.int64
    return (
        logits.new_empty((rows,), dtype=i64),
        logits.new_empty((rows,), dtype=f32),
        logits.new_empty((rows, top_k), dtype=i64),
        logits.new_empty((rows, top_k), dtype=f32),
        logits.new_empty((rows,), dtype=f32),
        logits.new_empty((rows,), dtype=f32),
    )


def marginals_op(
    logits, *, top_k=1, temperature=0.0, seed=0, step=0, positions=None, backend="auto"
) -> MarginalsOutput:
    """`spiffy_triton.marginals` through the custom op ``torch.ops.spiffy.marginals`` (same
    arguments and `MarginalsOutput`; traceable by ``torch.compile(fullgraph=True)``).

    >>> out = marginals_op(torch.tensor([[0.0, 2.0, 1.0]]), top_k=2, backend="torch")
    >>> out.token.tolist(), out.topk_tokens.tolist()
    ([1], [[1, 2]])
    """
    from .reference.marginals import validate_marginals_args

    validate_marginals_args(logits, top_k, temperature, seed, step, positions)
    dispatch.resolve_backend(backend, {"logits": logits, "positions": positions}, "marginals")
    signed_seed = seed - _SEED_SPAN if seed >= _SEED_SIGN else seed
    result = torch.ops.spiffy.marginals(
        logits, positions, top_k, float(temperature), signed_seed, step, backend
    )
    return MarginalsOutput(*result)
