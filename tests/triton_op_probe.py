"""Run by tests/test_ops_triton_op.py in a subprocess with ``TRITON_INTERPRET=0`` (the kernels
compiled for a GPU, none present): traces the `triton_op` registrations of spiffy_triton.ops
with fake tensors, which never launches a kernel, and prints what the traces hold as JSON.

Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "0"

import torch  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402

from spiffy_triton import ops, triton_mode  # noqa: E402
from spiffy_triton.kernels import graph_attention as attention_kernel  # noqa: E402
from spiffy_triton.kernels import marginals as marginals_kernel  # noqa: E402
from spiffy_triton.layout import SegmentLayout  # noqa: E402


def _kernel_nodes(graph_module) -> list[str]:
    """Names of the Triton kernels a traced graph launches (wrap_triton's mutation nodes)."""
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    names = []
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and "triton_kernel_wrapper" in str(node.target):
            kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
            names.append(kernel.fn.__name__)
    return names


def _attention() -> dict:
    layout = SegmentLayout.spiffy(5, 4, 3, 2)
    q = torch.randn(2, 4, layout.num_q_rows, 16)
    k, v = torch.randn(2, 2, layout.num_k_rows, 16), torch.randn(2, 2, layout.num_k_rows, 16)
    config = attention_kernel.select_config(16, q.dtype, q.shape[2], 2)
    schedule = layout.schedule(config.block_m // config.heads_per_tile, config.block_n)
    tensors = (
        schedule.tile_offsets,
        schedule.entries,
        schedule.row_segment,
        schedule.row_offset,
        schedule.visibility,
    )

    def call(q, k, v, *schedule_tensors):
        op = torch.ops.spiffy.graph_attention_triton
        return op(q, k, v, *schedule_tensors, layout.num_k_segments, 0.25)

    with FakeTensorMode() as mode:
        out, lse = call(*(mode.from_tensor(t) for t in (q, k, v, *tensors)))
    op_graph = make_fx(call, tracing_mode="fake")(q, k, v, *tensors)
    body = make_fx(
        lambda *a: ops.graph_attention_launch(*a, layout.num_k_segments, 0.25),
        tracing_mode="fake",
    )(q, k, v, *tensors)
    return {
        "out": [list(out.shape), str(out.dtype)],
        "lse": [list(lse.shape), str(lse.dtype)],
        "op_nodes": _call_targets(op_graph),
        "kernels": _kernel_nodes(body),
    }


def _marginals(splits: int) -> dict:
    """Marginals with `splits` vocabulary splits (2: the split kernel and the combine kernel)."""
    logits, positions = torch.randn(6, 3000), torch.arange(6)
    args = (3, 0.7, 5, 1)

    def call(logits, positions):
        return torch.ops.spiffy.marginals_triton(logits, positions, *args)

    with FakeTensorMode() as mode:
        fake = call(mode.from_tensor(logits), mode.from_tensor(positions))
    op_graph = make_fx(call, tracing_mode="fake")(logits, positions)
    body = make_fx(
        lambda lg, pos: tuple(
            marginals_kernel.launch(lg, pos, *args, config={"splits": splits, "block_v": 1024})
        ),
        tracing_mode="fake",
    )(logits, positions)
    return {
        "outputs": [[list(t.shape), str(t.dtype)] for t in fake],
        "op_nodes": _call_targets(op_graph),
        "kernels": _kernel_nodes(body),
    }


class _AttentionModule(torch.nn.Module):
    """What a model does with a layout: the wrapper's Triton path inside a traced forward."""

    def __init__(self, layout: SegmentLayout):
        super().__init__()
        self.layout = layout

    def forward(self, q, k, v):
        out, _ = ops._graph_attention_triton(q, k, v, self.layout, 0.25)
        return out * 2


def _exported() -> dict:
    """``torch.export`` (strict: dynamo) of a forward calling the wrapper's Triton path: no
    graph break, the tile schedule as graph constants, the op as one node."""
    layout = SegmentLayout.spiffy(5, 4, 3, 2)
    q = torch.randn(2, 4, layout.num_q_rows, 16)
    k, v = torch.randn(2, 2, layout.num_k_rows, 16), torch.randn(2, 2, layout.num_k_rows, 16)
    program = torch.export.export(_AttentionModule(layout), (q, k, v), strict=True)
    inputs = [spec.arg.name for spec in program.graph_signature.input_specs]
    return {"op_nodes": _call_targets(program.graph_module), "inputs": inputs}


def _call_targets(graph_module) -> list[str]:
    return [str(n.target) for n in graph_module.graph.nodes if n.op == "call_function"]


def main() -> None:
    result = {
        "interpreter": triton_mode.interpreter_enabled(),
        "attention": _attention(),
        "marginals": {splits: _marginals(splits) for splits in (1, 2)},
        "exported": _exported(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
