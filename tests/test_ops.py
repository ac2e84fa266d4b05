"""The kernels as torch.library custom ops (spiffy_triton/ops.py): opcheck on both backends,
bitwise equality with the plain dispatch functions, the layout's tensor encoding, and a
verify forward of the bundled model under ``torch.compile(fullgraph=True)``."""

from __future__ import annotations

import pytest
import torch

from spiffy_triton import dispatch
from spiffy_triton.layout import CAUSAL, SegmentLayout
from spiffy_triton.ops import graph_attention_op, marginals_op

LAYOUTS = {
    "spiffy": SegmentLayout.spiffy(5, 4, 3, 2),
    "spiffy_cached": SegmentLayout.spiffy(5, 4, 3, 2, cached=True),
    "simsd": SegmentLayout.simsd(6, 2, 5),
    "causal": SegmentLayout((7,), (7,), [[CAUSAL]]),
}
BACKENDS = ("torch", "triton")


def _qkv(layout, *, heads=4, kv_heads=2, dim=16, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads, layout.num_q_rows, dim, generator=gen, dtype=dtype)
    k = torch.randn(2, kv_heads, layout.num_k_rows, dim, generator=gen, dtype=dtype)
    v = torch.randn(2, kv_heads, layout.num_k_rows, dim, generator=gen, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layout_tensor_encoding_round_trips(name):
    layout = LAYOUTS[name]
    q_lengths, k_lengths, visibility, key_order = layout.to_tensors()
    assert q_lengths.dtype == k_lengths.dtype == key_order.dtype == torch.int64
    assert visibility.dtype == torch.int8
    assert visibility.shape == (layout.num_q_segments, layout.num_k_segments)
    rebuilt = SegmentLayout.from_tensors(q_lengths, k_lengths, visibility, key_order)
    assert rebuilt == layout and rebuilt.key_order == layout.key_order
    assert torch.equal(rebuilt.to_dense(), layout.to_dense())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["spiffy", "causal"])
def test_graph_attention_opcheck(name, backend):
    layout = LAYOUTS[name]
    q, k, v = _qkv(layout)
    args = (q, k, v, *layout.to_tensors(), 0.25, backend)
    torch.library.opcheck(torch.ops.spiffy.graph_attention.default, args)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_graph_attention_op_equals_dispatch(name, backend):
    layout = LAYOUTS[name]
    q, k, v = _qkv(layout, seed=1)
    out, lse = graph_attention_op(q, k, v, layout, return_lse=True, backend=backend)
    want, want_lse = dispatch.graph_attention(q, k, v, layout, return_lse=True, backend=backend)
    assert torch.equal(out, want) and torch.equal(lse, want_lse)
    assert torch.equal(graph_attention_op(q, k, v, layout, backend=backend), want)


def test_graph_attention_op_errors_name_the_argument():
    layout = LAYOUTS["spiffy"]
    q, k, v = _qkv(layout)
    with pytest.raises(ValueError, match="q has 19 rows"):
        graph_attention_op(q[:, :, :19], k, v, layout)
    with pytest.raises(TypeError, match="layout must be a spiffy_triton.SegmentLayout"):
        graph_attention_op(q, k, v, layout.to_dense())
    with pytest.raises(TypeError, match="q, k, v must share one dtype"):
        graph_attention_op(q.double(), k, v, layout)
    with pytest.raises(ValueError, match="backend must be one of"):
        graph_attention_op(q, k, v, layout, backend="cuda")


def _logits(rows=6, vocab=1500, seed=0):
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


MARGINALS_CASES = {
    "greedy": dict(top_k=3),
    "sampled": dict(top_k=2, temperature=0.7, seed=2**64 - 5, step=3),
    "positions": dict(top_k=1, temperature=1.0, seed=9, positions=torch.arange(10, 16)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(MARGINALS_CASES))
def test_marginals_opcheck(case, backend):
    kw = MARGINALS_CASES[case]
    seed = kw.get("seed", 0)
    args = (
        _logits(),
        kw.get("positions"),
        kw["top_k"],
        float(kw.get("temperature", 0.0)),
        seed - 2**64 if seed >= 2**63 else seed,
        kw.get("step", 0),
        backend,
    )
    torch.library.opcheck(torch.ops.spiffy.marginals.default, args)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(MARGINALS_CASES))
def test_marginals_op_equals_dispatch(case, backend):
    kw = MARGINALS_CASES[case]
    logits = _logits(seed=4)
    got = marginals_op(logits, backend=backend, **kw)
    want = dispatch.marginals(logits, backend=backend, **kw)
    for name, a, b in zip(want._fields, got, want):
        assert torch.equal(a, b), name


def test_marginals_op_errors_name_the_argument():
    with pytest.raises(ValueError, match="logits must be 2-D"):
        marginals_op(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="seed must be an int in"):
        marginals_op(_logits(), seed=2**64)
    with pytest.raises(ValueError, match="positions must have shape"):
        marginals_op(_logits(), positions=torch.arange(3))


# ---------------------------------------------------------------------------- torch.compile


def test_compiled_verify_forward_has_no_graph_break_and_same_logits():
    """The bundled model's packed dual-cache verify forward (the decoder's hot call) under
    ``torch.compile(fullgraph=True)``: no graph break (fullgraph raises on one), and the
    logits equal the eager forward's."""
    from spiffy_triton import load_model

    torch._dynamo.reset()
    model = load_model("tiny", dtype=torch.float32, backend="torch")
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.embedding_size
    x = torch.randint(0, vocab - 1, (1, 48), generator=gen)
    s, e, d = 16, 32, 3
    with torch.no_grad():
        _, cache = model.prefill(x, block_start=s, block_end=e, mode="dual")
        drafts = torch.randint(0, vocab - 1, (d, e - s), generator=gen)
        ids = torch.cat([x[0, s:e], drafts.reshape(-1)])[None]
        pos = torch.arange(s, e).repeat(1 + d)
        layout = SegmentLayout.spiffy(s, e - s, x.shape[1] - e, d, cached=True)
        eager = model(ids, position_ids=pos, layout=layout, cache=cache)
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        got = compiled(ids, position_ids=pos, layout=layout, cache=cache)
        # uncached packed verify as well (query rows = key rows)
        layout2 = SegmentLayout.spiffy(s, e - s, x.shape[1] - e, d)
        ids2 = torch.cat([x[0], drafts.reshape(-1)])[None]
        pos2 = torch.cat([torch.arange(48), torch.arange(s, e).repeat(d)])
        eager2 = model(ids2, position_ids=pos2, layout=layout2)
        got2 = compiled(ids2, position_ids=pos2, layout=layout2)
    assert torch.equal(got, eager)
    assert torch.equal(got2, eager2)
