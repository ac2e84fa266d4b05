"""The Triton path of the torch ops as `torch.library.triton_op` (spiffy_triton/ops.py).

On CPU: the eager ops equal the kernels bit for bit in the interpreter (the ``ops`` parity
cases, shared with the GPU runner), and, in a process with the interpreter off and no GPU,
the ops trace with fake tensors: shapes propagate and the op's body records the Triton
kernels themselves as graph nodes (tests/triton_op_probe.py), which is what lets
``torch.compile`` see them. On CUDA the same cases add opcheck and a compiled verify forward.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from parity_cases import cases_of
from utils import parity_params

from spiffy_triton import ops, triton_mode

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("case, device", parity_params(cases_of("ops")))
def test_ops_parity(case, device):
    case.run(device)


def test_interpreter_takes_the_opaque_op():
    """In the interpreter a traced wrap_triton launch cannot run on fake tensors: the wrappers
    use the opaque custom op there, the triton_op only for compiled kernels."""
    assert ops._traceable_triton("triton") is not triton_mode.interpreter_enabled()
    assert not ops._traceable_triton("torch")


@pytest.fixture(scope="module")
def traced():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, str(TESTS / "triton_op_probe.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_probe_ran_without_the_interpreter(traced):
    assert traced["interpreter"] is False


def test_attention_op_traces_to_the_kernel(traced):
    attention = traced["attention"]
    assert attention["out"] == [[2, 4, 20, 16], "torch.float32"]
    assert attention["lse"] == [[2, 4, 20], "torch.float32"]
    ops_called = [n for n in attention["op_nodes"] if "getitem" not in n]
    assert ops_called == ["spiffy.graph_attention_triton.default"]
    assert attention["kernels"] == ["_graph_attention_fwd"]


def test_marginals_op_traces_to_the_kernels(traced):
    want = [
        [[6], "torch.int64"],
        [[6], "torch.float32"],
        [[6, 3], "torch.int64"],
        [[6, 3], "torch.float32"],
        [[6], "torch.float32"],
        [[6], "torch.float32"],
    ]
    for splits, kernels in (
        ("1", ["_marginals_kernel"]),
        ("2", ["_marginals_kernel", "_combine_kernel"]),
    ):
        marginals = traced["marginals"][splits]
        assert marginals["outputs"] == want
        ops_called = [n for n in marginals["op_nodes"] if "getitem" not in n]
        assert ops_called == ["spiffy.marginals_triton.default"]
        assert marginals["kernels"] == kernels


def test_wrapper_exports_with_the_schedule_as_constants(traced):
    exported = traced["exported"]
    ops_called = [n for n in exported["op_nodes"] if "getitem" not in n]
    assert ops_called == ["spiffy.graph_attention_triton.default", "aten.mul.Tensor"]
    constants = [name for name in exported["inputs"] if "schedule_tensors" in name]
    assert len(constants) == 5, exported["inputs"]


def test_schedule_constant_is_guarded_on_the_layout():
    """`schedule_tensors` is a constant of a compiled graph: a second layout must not reuse the
    first one's schedule (dynamo guards on the layout and compiles again)."""
    import torch

    from spiffy_triton.layout import SegmentLayout

    def total(q, layout):
        return q.sum() + sum(t.sum() for t in ops.schedule_tensors(layout, 32, 64, q.device))

    torch._dynamo.reset()
    compiled = torch.compile(total, fullgraph=True, backend="eager")
    q = torch.ones(3)
    for drafts in (3, 2, 0):
        layout = SegmentLayout.spiffy(37, 16, 21, drafts, cached=True)
        assert torch.equal(compiled(q, layout), total(q, layout))
