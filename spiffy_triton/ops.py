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

The Triton path has a second registration, through `torch.library.triton_op`:
``torch.ops.spiffy.graph_attention_triton`` and ``torch.ops.spiffy.marginals_triton``. Their
bodies are the kernels' shape-only launchers (``launch`` in each kernel file) with the launches
wrapped by ``wrap_triton``, so ``make_fx`` / ``torch.compile`` record the kernel itself as a
graph node (inductor can then schedule it with the rest of the graph) and their fake
implementations come from tracing the body. What a trace cannot read stays outside the op: the
attention's tile schedule is built on the host from the layout's *values*, so it crosses the op
boundary as tensors (`SegmentLayout.schedule`). `graph_attention_op` / `marginals_op` take this
path for ``backend="triton"`` on a GPU; in the Triton interpreter (CPU) ``wrap_triton`` gives
the interpreted kernel back, which cannot run on fake tensors, so there they call the opaque
custom op instead (docs/INTEGRATION.md says what is checked where).

Example::

    import torch
    from spiffy_triton import SegmentLayout, graph_attention_op

    layout = SegmentLayout.spiffy(prefix_len=4, block_len=4, suffix_len=0, num_drafts=2)
    q = k = v = torch.randn(1, 2, layout.num_q_rows, 8)
    out = graph_attention_op(q, k, v, layout, backend="torch")  # torch.ops.spiffy.graph_attention
"""

from __future__ import annotations

import torch

from . import dispatch, triton_mode
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
    """`spiffy_triton.graph_attention` through a torch op (same arguments and results;
    traceable by ``torch.compile(fullgraph=True)``): ``torch.ops.spiffy.graph_attention_triton``
    for the Triton kernel on a GPU, ``torch.ops.spiffy.graph_attention`` otherwise.

    >>> layout = SegmentLayout.full(4)
    >>> q = torch.ones(1, 1, 4, 2)
    >>> graph_attention_op(q, q, q, layout, backend="torch").shape
    torch.Size([1, 1, 4, 2])
    """
    scale = validate_attention_inputs(q, k, v, layout, scale, return_lse)
    resolved = dispatch.resolve_backend(backend, {"q": q, "k": k, "v": v}, "graph_attention")
    if _traceable_triton(resolved):
        out, lse = _graph_attention_triton(q, k, v, layout, scale)
    else:
        out, lse = torch.ops.spiffy.graph_attention(q, k, v, *layout.to_tensors(), scale, backend)
    return (out, lse) if return_lse else out


def _graph_attention_triton(q, k, v, layout: SegmentLayout, scale: float):
    from .kernels import graph_attention as kernel

    kernel.check_kernel_inputs(q, k, v, layout, scale, True)
    config = kernel.select_config(q.shape[-1], q.dtype, q.shape[2], q.shape[1] // k.shape[1])
    block_m = config.block_m // config.heads_per_tile
    schedule = schedule_tensors(layout, block_m, config.block_n, q.device)
    return torch.ops.spiffy.graph_attention_triton(q, k, v, *schedule, layout.num_k_segments, scale)


@torch.compiler.assume_constant_result
def schedule_tensors(layout: SegmentLayout, block_m: int, block_n: int, device) -> tuple:
    """The layout's tile schedule as the op's five tensors. Built from the layout's values on
    the host, which a trace cannot read: under ``torch.compile`` the result is a constant of
    the graph (guarded on the layout, so another layout compiles another graph)."""
    s = layout.schedule(block_m, block_n, device)
    return (s.tile_offsets, s.entries, s.row_segment, s.row_offset, s.visibility)


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
    """`spiffy_triton.marginals` through a torch op (same arguments and `MarginalsOutput`;
    traceable by ``torch.compile(fullgraph=True)``): ``torch.ops.spiffy.marginals_triton`` for
    the Triton kernel on a GPU, ``torch.ops.spiffy.marginals`` otherwise.

    >>> out = marginals_op(torch.tensor([[0.0, 2.0, 1.0]]), top_k=2, backend="torch")
    >>> out.token.tolist(), out.topk_tokens.tolist()
    ([1], [[1, 2]])
    """
    from .contract import validate_marginals_args

    validate_marginals_args(logits, top_k, temperature, seed, step, positions)
    tensors = {"logits": logits, "positions": positions}
    resolved = dispatch.resolve_backend(backend, tensors, "marginals")
    signed_seed = seed - _SEED_SPAN if seed >= _SEED_SIGN else seed
    if _traceable_triton(resolved):
        positions = validate_marginals_args(
            logits, top_k, temperature, seed, step, positions, float64_ok=False
        )
        result = torch.ops.spiffy.marginals_triton(
            logits, positions, top_k, float(temperature), signed_seed, step
        )
    else:
        result = torch.ops.spiffy.marginals(
            logits, positions, top_k, float(temperature), signed_seed, step, backend
        )
    return MarginalsOutput(*result)


# ---------------------------------------------------------------- the Triton path as triton_op


def _traceable_triton(resolved_backend: str) -> bool:
    """The `triton_op` registrations serve the Triton backend outside the interpreter (module
    docstring: an interpreted kernel cannot run on the fake tensors of a trace)."""
    if _triton_op is None:
        return False
    return resolved_backend == "triton" and not triton_mode.interpreter_enabled()


def graph_attention_launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tile_offsets: torch.Tensor,
    entries: torch.Tensor,
    row_segment: torch.Tensor,
    row_offset: torch.Tensor,
    visibility: torch.Tensor,
    num_k_segments: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The body of ``spiffy::graph_attention_triton``: the kernel's launch over a tile schedule
    given as tensors (what `SegmentLayout.schedule` builds for the shapes' config)."""
    from .kernels import graph_attention as kernel
    from .layout import TileSchedule

    config = kernel.select_config(q.shape[-1], q.dtype, q.shape[2], q.shape[1] // k.shape[1])
    block_m = config.block_m // config.heads_per_tile
    schedule = TileSchedule(
        block_m,
        config.block_n,
        tile_offsets.shape[0] - 1,
        tile_offsets,
        entries,
        row_segment,
        row_offset,
        visibility,
    )
    return kernel.launch(q, k, v, schedule, num_k_segments, scale, True, config)


def marginals_launch(
    logits: torch.Tensor,
    positions: torch.Tensor,
    top_k: int,
    temperature: float,
    seed: int,
    step: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The body of ``spiffy::marginals_triton``: the kernels' launch on checked arguments."""
    from .kernels import marginals as kernel

    return tuple(kernel.launch(logits, positions, top_k, temperature, seed % _SEED_SPAN, step))


try:  # torch >= 2.6; the bodies import the kernels (and triton) on their first call
    from torch.library import triton_op as _triton_op
except ImportError:
    _triton_op = None
else:
    _triton_op("spiffy::graph_attention_triton", mutates_args=())(graph_attention_launch)
    _triton_op("spiffy::marginals_triton", mutates_args=())(marginals_launch)
