"""The Triton path of the torch ops (spiffy_triton/ops.py, `triton_op` registrations) on any
device. No pytest here: run by tests/test_ops_triton_op.py and by the standalone runner
(tests/parity_cases.py, group ``ops``), on CPU tensors (Triton interpreter: the eager op) or
CUDA tensors (the op, `torch.library.opcheck`, and a compiled verify forward).
"""

from __future__ import annotations

import torch

from spiffy_triton import dispatch, ops
from spiffy_triton.kernels import graph_attention as attention_kernel
from spiffy_triton.layout import SegmentLayout


def _schedule_args(layout: SegmentLayout, q: torch.Tensor, k: torch.Tensor) -> tuple:
    config = attention_kernel.select_config(
        q.shape[-1], q.dtype, q.shape[2], q.shape[1] // k.shape[1]
    )
    s = layout.schedule(config.block_m // config.heads_per_tile, config.block_n, q.device)
    tensors = (s.tile_offsets, s.entries, s.row_segment, s.row_offset, s.visibility)
    return (*tensors, layout.num_k_segments)


def attention_op_case(dtype: torch.dtype, cached: bool, *, device: str) -> None:
    """``spiffy::graph_attention_triton`` gives the kernel's output and lse bit for bit (and,
    on CUDA, passes opcheck and is what `graph_attention_op` calls)."""
    layout = SegmentLayout.spiffy(37, 16, 21, 3, cached=cached)
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, layout.num_q_rows, 64, generator=gen).to(device, dtype)
    k = torch.randn(2, 2, layout.num_k_rows, 64, generator=gen).to(device, dtype)
    v = torch.randn(2, 2, layout.num_k_rows, 64, generator=gen).to(device, dtype)
    args = (q, k, v, *_schedule_args(layout, q, k), 0.125)
    out, lse = torch.ops.spiffy.graph_attention_triton(*args)
    want, want_lse = dispatch.graph_attention(
        q, k, v, layout, scale=0.125, return_lse=True, backend="triton"
    )
    assert torch.equal(out, want) and torch.equal(lse, want_lse)
    if device == "cuda":
        assert ops._traceable_triton("triton")
        got = ops.graph_attention_op(q, k, v, layout, scale=0.125, backend="triton")
        assert torch.equal(got, want)
        torch.library.opcheck(torch.ops.spiffy.graph_attention_triton.default, args)


def marginals_op_case(temperature: float, *, device: str) -> None:
    """``spiffy::marginals_triton`` gives the kernels' outputs bit for bit (split vocabulary
    included); on CUDA also opcheck and `marginals_op`."""
    gen = torch.Generator().manual_seed(5)
    logits = (torch.randn(5, 3001, generator=gen) * 3).to(device)
    positions = torch.arange(40, 45, device=device)
    args = (logits, positions, 3, temperature, 2**40 + 1, 1)
    got = torch.ops.spiffy.marginals_triton(*args)
    want = dispatch.marginals(
        logits,
        top_k=3,
        temperature=temperature,
        seed=2**40 + 1,
        step=1,
        positions=positions,
        backend="triton",
    )
    for name, a, b in zip(want._fields, got, want):
        assert torch.equal(a, b), name
    if device == "cuda":
        kw = dict(top_k=3, temperature=temperature, seed=2**40 + 1, step=1, positions=positions)
        for name, a, b in zip(want._fields, ops.marginals_op(logits, **kw), want):
            assert torch.equal(a, b), name
        torch.library.opcheck(torch.ops.spiffy.marginals_triton.default, args)


def compiled_verify_case(*, device: str) -> None:
    """The bundled model's packed dual-cache verify forward on the Triton backend under
    ``torch.compile(fullgraph=True)`` (aot_eager: the triton_op decomposes into the kernel
    launch) equals the eager forward bit for bit."""
    from spiffy_triton import load_model

    torch._dynamo.reset()
    model = load_model("tiny", dtype=torch.float32, backend="triton").to(device)
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.embedding_size
    x = torch.randint(0, vocab - 1, (1, 48), generator=gen).to(device)
    s, e, d = 16, 32, 3
    with torch.no_grad():
        _, cache = model.prefill(x, block_start=s, block_end=e, mode="dual")
        drafts = torch.randint(0, vocab - 1, (d, e - s), generator=gen).to(device)
        ids = torch.cat([x[0, s:e], drafts.reshape(-1)])[None]
        pos = torch.arange(s, e, device=device).repeat(1 + d)
        layout = SegmentLayout.spiffy(s, e - s, x.shape[1] - e, d, cached=True)
        eager = model(ids, position_ids=pos, layout=layout, cache=cache)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        got = compiled(ids, position_ids=pos, layout=layout, cache=cache)
    assert torch.equal(got, eager)
