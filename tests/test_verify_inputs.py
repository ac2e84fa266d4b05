"""The one builder of verify inputs (spiffy_triton/verify_inputs.py): its shapes are the cost
model's `verify_shape`, its layout's rows are its ids', and `split` reads each draft's rows."""

from __future__ import annotations

import pytest
import torch

from spiffy_triton.decoding.cost_model import verify_shape
from spiffy_triton.verify_inputs import verify_inputs


@pytest.mark.parametrize("drafts", [0, 1, 3])
@pytest.mark.parametrize("verify", ["packed", "batch"])
@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
def test_builder_shapes_are_the_cost_models(cache, verify, drafts):
    t, s, e = 20, 8, 12
    x = torch.arange(t)[None]
    states = 100 + torch.arange(drafts * (e - s)).view(drafts, e - s)
    inputs = verify_inputs(x, s, e, states, cache, verify)
    shape = verify_shape(cache, verify, s, e - s, t, drafts)
    assert tuple(inputs.input_ids.shape) == (shape.batch, shape.rows)
    assert inputs.position_ids.shape == (shape.rows,)
    assert (inputs.layout.num_q_rows, inputs.layout.num_k_rows) == (shape.rows, shape.keys)
    # logits that are the input ids themselves: split must hand back each state's tokens
    root, draft_logits, _ = inputs.split(inputs.input_ids[..., None].float())
    assert torch.equal(root[:, 0].long(), x[0, s:e])
    assert torch.equal(draft_logits[..., 0].long(), states)


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
@pytest.mark.parametrize("verify", ["packed", "batch"])
def test_shifted_window_reads_each_position_from_the_row_before(cache, verify):
    """shift=1 (Dream): draft copies carry the anchor token; position i is read from row
    i - 1 of the window, so split hands back the anchor then the state's first L - 1 ids."""
    t, s, e = 20, 8, 12
    x = torch.arange(t)[None]
    states = 100 + torch.arange(2 * (e - s)).view(2, e - s)
    inputs = verify_inputs(x, s, e, states, cache, verify, shift=1)
    root, draft_logits, _ = inputs.split(inputs.input_ids[..., None].float())
    assert torch.equal(root[:, 0].long(), x[0, s - 1 : e - 1])
    anchor = x[0, s - 1].expand(2, 1)
    assert torch.equal(draft_logits[..., 0].long(), torch.cat([anchor, states[:, :-1]], dim=1))
