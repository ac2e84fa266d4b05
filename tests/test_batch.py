"""Batched decoding (spiffy_triton/decoding/batch.py): every row's tokens, NFE and steps equal
its B = 1 call's, vanilla and Spiffy, greedy and sampled; rows of one shape share forwards."""

from __future__ import annotations

import pytest
import torch

from spiffy_triton import generate, load_model
from spiffy_triton.decoding.batch import BatchGenerateOutput, split_prompts


@pytest.fixture(scope="module")
def model():
    return load_model("tiny", dtype=torch.float32, backend="torch")


TEXTS = ("Q: 4+5+6=?\nA: ", "Q: 7+2=?\nA: ", "Q: 3+1=?\nA: ")  # the last two: one length


@pytest.mark.parametrize(
    "graph,rule",
    [(None, {}), (8, {}), (8, {"temperature": 0.8, "seed": 5})],
    ids=["vanilla", "spiffy-greedy", "spiffy-T0.8"],
)
def test_each_row_is_decoded_as_alone(model, graph, rule):
    prompts = [torch.tensor(model.tokenizer.encode(t)) for t in TEXTS]
    kw = dict(gen_length=64, block_length=32, graph=graph, **rule)
    if graph is not None:
        kw["max_drafts"] = None
    out = generate(model, prompts, **kw)
    assert isinstance(out, BatchGenerateOutput) and len(out.rows) == 3
    for prompt, row in zip(prompts, out.rows):
        alone = generate(model, prompt[None], **kw)
        assert torch.equal(row.tokens, alone.tokens)
        assert (row.nfe, row.steps) == (alone.nfe, alone.steps)
    # rows 1 and 2 share a shape: their forwards are shared while both decode
    assert out.forwards < out.row_forwards


def test_padded_prompts_with_lengths_equal_the_list(model):
    ids = [model.tokenizer.encode(t) for t in TEXTS]
    width = max(map(len, ids))
    padded = torch.zeros(3, width, dtype=torch.long)
    for i, row in enumerate(ids):
        padded[i, : len(row)] = torch.tensor(row)
    lengths = [len(r) for r in ids]
    kw = dict(gen_length=32, block_length=32)
    from_padded = generate(model, padded, lengths=lengths, **kw)
    from_list = generate(model, [torch.tensor(r) for r in ids], **kw)
    for a, b in zip(from_padded.rows, from_list.rows):
        assert torch.equal(a.tokens, b.tokens)


def test_batch_errors_name_the_argument(model):
    p = torch.tensor(model.tokenizer.encode(TEXTS[0]))
    with pytest.raises(ValueError, match="max_drafts=None or an int"):
        generate(model, [p, p], gen_length=32, block_length=32, graph=8)
    with pytest.raises(ValueError, match="lengths\\[1\\] must be an int in"):
        split_prompts(torch.zeros(2, 4, dtype=torch.long), lengths=[2, 5])
    with pytest.raises(ValueError, match="prompts\\[0\\] must be a 1-D tensor"):
        split_prompts([p[None]])
