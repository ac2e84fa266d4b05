"""Batched `generate` on the Triton backend in the interpreter: rows run in threads, and the
interpreter's launches share process-wide state, so kernel calls must be serialized
(`triton_mode.kernel_run_lock`; without it two rows' marginals launches fail with
``x >= grid_dim[0]``). Each row still equals its B = 1 decode."""

from __future__ import annotations

import pytest
import torch
from utils import interpreter_active

from spiffy_triton import generate, load_model

pytestmark = pytest.mark.skipif(not interpreter_active(), reason="needs the Triton interpreter")


def test_rows_in_threads_on_the_interpreted_kernels_equal_b1():
    model = load_model("tiny", dtype=torch.float32, backend="triton")
    texts = ["Q: 3+4=?\nA: ", "Q: 12+5+1=?\nA: ", "Q: 7+7=?\nA: "]
    prompts = [torch.tensor(model.tokenizer.encode(t)) for t in texts]
    kwargs = dict(gen_length=8, block_length=8, cache="dual", temperature=0.7, seed=3)
    kwargs.update(graph=4, max_drafts=None, backend="triton")
    batch = generate(model, prompts, **kwargs)
    for prompt, row in zip(prompts, batch.rows):
        alone = generate(model, prompt[None], **kwargs)
        assert torch.equal(row.tokens, alone.tokens)
        assert row.nfe == alone.nfe and row.steps == alone.steps
