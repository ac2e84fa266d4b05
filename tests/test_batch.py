"""Batched decoding (spiffy_triton/decoding/batch/): every row's tokens, NFE and steps equal
its B = 1 call's, vanilla and Spiffy, greedy and sampled, every cache and verify mode; rows of
one shape share forwards (their caches stacked per row); auto budgets per row (tokens only)."""

from __future__ import annotations

import functools

import pytest
import torch
from utils import tiny_qwen_config

from spiffy_triton import generate, load_model
from spiffy_triton.decoding.batch import BatchGenerateOutput, BatchRowStats, split_prompts
from spiffy_triton.decoding.budget import AutoDraftBudget
from spiffy_triton.models import DreamModel


@pytest.fixture(scope="module")
def model():
    return load_model("tiny", dtype=torch.float32, backend="torch")


@functools.cache
def tiny_dream() -> DreamModel:
    config = tiny_qwen_config(model_type="Dream", num_hidden_layers=2)
    return DreamModel(config, backend="torch").init_weights(1, std=0.5).double().eval()


TEXTS = ("Q: 4+5+6=?\nA: ", "Q: 7+2=?\nA: ", "Q: 3+1=?\nA: ")  # the last two: one length


def check_rows_alone(model, prompts, out, kw, *, nfe=True):
    assert isinstance(out, BatchGenerateOutput) and len(out.rows) == len(prompts)
    for prompt, row in zip(prompts, out.rows):
        alone = generate(model, prompt[None], **kw)
        assert torch.equal(row.tokens, alone.tokens)
        if nfe:
            assert (row.nfe, row.steps) == (alone.nfe, alone.steps)


MODES = [(None, "batch"), (None, "packed"), ("prefix", "batch"), ("prefix", "packed")]
MODES += [("dual", "batch"), ("dual", "packed")]


RULES = {"vanilla": (None, {}), "spiffy-greedy": (8, {}), "spiffy-T0.8": (8, {"temperature": 0.8})}
CASES = [(c, v, r) for c, v in MODES for r in ("spiffy-greedy", "spiffy-T0.8")]
CASES += [(None, "batch", "vanilla"), ("prefix", "packed", "vanilla"), ("dual", "batch", "vanilla")]


@pytest.mark.parametrize("cache,verify,rule", CASES, ids=[f"{c}-{v}-{r}" for c, v, r in CASES])
def test_each_row_is_decoded_as_alone(model, cache, verify, rule):
    prompts = [torch.tensor(model.tokenizer.encode(t)) for t in TEXTS]
    graph, extra = RULES[rule]
    kw = dict(gen_length=32, block_length=16, graph=graph, cache=cache, verify=verify, **extra)
    if extra:
        kw["seed"] = 5
    if graph is not None:
        kw["max_drafts"] = None
    out = generate(model, prompts, **kw)
    check_rows_alone(model, prompts, out, kw)
    # rows 1 and 2 share a length: their forwards (and prefills) are shared while both decode;
    # forwards on the layout path (cached, packed drafts) are packed varlen with row 0 too
    assert out.forwards < out.row_forwards
    assert out.rows_evaluated >= out.forwards
    assert sum(s.shared_forwards + s.alone_forwards for s in out.row_stats) == out.row_forwards
    assert out.row_stats[1].shared_forwards > 0
    varlen = cache is not None or (verify == "packed" and graph is not None)
    assert (out.row_stats[0].shared_forwards > 0) == varlen
    assert isinstance(out.row_stats[0], BatchRowStats)


@pytest.mark.parametrize("cache,verify", [(None, "batch"), ("dual", "packed"), ("prefix", "batch")])
def test_dream_rows_share_forwards_and_decode_as_alone(cache, verify):
    model = tiny_dream()
    prompts = [torch.tensor([5, 17, 3, 40, 22]), torch.tensor([11, 2, 60, 33, 7])]
    prompts.append(torch.tensor([40, 41, 1, 0, 12, 19, 25]))
    kw = dict(gen_length=16, block_length=8, cache=cache, verify=verify, backend="torch")
    for graph, rule in ((None, {}), (8, {"temperature": 0.7, "seed": 51})):
        args = dict(kw, graph=graph, **rule, **({} if graph is None else {"max_drafts": None}))
        out = generate(model, prompts, **args)
        check_rows_alone(model, prompts, out, args)
        assert out.forwards < out.row_forwards


def test_auto_budgets_per_row_keep_the_tokens(model):
    """``max_drafts="auto"``: a budget per row (draft counts follow timings, so NFE may
    differ from B = 1; the tokens may not)."""
    prompts = [torch.tensor(model.tokenizer.encode(t)) for t in TEXTS]
    for cache, verify in ((None, "batch"), ("dual", "packed")):
        kw = dict(gen_length=32, block_length=32, graph=8, cache=cache, verify=verify)
        out = generate(model, prompts, max_drafts="auto", **kw)
        check_rows_alone(model, prompts, out, dict(kw, max_drafts=None), nfe=False)
        for row in out.rows:
            assert row.stats.draft_budget is not None
    budgets = [AutoDraftBudget() for _ in prompts]
    out = generate(model, prompts, gen_length=32, block_length=32, graph=8, max_drafts=budgets)
    assert [b.runs for b in budgets] == [1, 1, 1]
    check_rows_alone(model, prompts, out, dict(gen_length=32, block_length=32), nfe=False)


@pytest.mark.parametrize("cache,verify", [("dual", "packed"), ("prefix", "batch")])
def test_mixed_lengths_share_varlen_forwards(model, cache, verify):
    """Prompts of three lengths: the verify forwards of a round are one varlen call (the
    rows' segments side by side over one merged cache); prefills of one length share."""
    texts = ("Q: 1+1=?\nA: ", "Q: 12+30=?\nA: ", "Q: 100+200=?\nA: ", "Q: 2+2=?\nA: ")
    prompts = [torch.tensor(model.tokenizer.encode(t)) for t in texts]
    kw = dict(gen_length=32, block_length=16, graph=4, max_drafts=2, cache=cache, verify=verify)
    out = generate(model, prompts, **kw)
    check_rows_alone(model, prompts, out, kw)
    assert all(s.shared_forwards > 0 for s in out.row_stats)
    assert out.rounds == max(r.nfe for r in out.rows) and out.forwards < out.row_forwards
    summary = out.summary()
    assert summary["forwards"] == out.forwards and len(summary["per_row"]) == 4


def test_rows_that_finish_early_stop_costing_rows(model):
    prompts = [torch.tensor(model.tokenizer.encode(t)) for t in TEXTS]
    kw = dict(gen_length=32, block_length=16, graph=8, max_drafts=None, threshold=0.3)
    out = generate(model, prompts, **kw)
    check_rows_alone(model, prompts, out, kw)
    nfe = [r.nfe for r in out.rows]
    assert out.rounds == max(nfe) and out.rows_saved == sum(max(nfe) - n for n in nfe)


def test_sdar_rows_share_forwards_and_decode_as_alone():
    from test_sdar import tiny as tiny_sdar

    model = tiny_sdar()
    prompts = [torch.tensor([5, 17, 3, 40, 22, 9, 31]), torch.tensor([11, 2, 60, 33, 7])]
    for cache, verify in ((None, "packed"), ("prefix", "batch")):
        kw = dict(gen_length=8, block_length=4, graph=4, max_drafts=None, cache=cache)
        kw.update(verify=verify, backend="torch", temperature=0.7, seed=3)
        out = generate(model, prompts, **kw)
        check_rows_alone(model, prompts, out, kw)
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
    kw = dict(gen_length=32, block_length=32, graph=8)
    with pytest.raises(ValueError, match="one AutoDraftBudget per row"):
        generate(model, [p, p], max_drafts=AutoDraftBudget(), **kw)
    budget = AutoDraftBudget()
    with pytest.raises(ValueError, match="same AutoDraftBudget for two rows"):
        generate(model, [p, p], max_drafts=[budget, budget], **kw)
    with pytest.raises(ValueError, match="one entry per row \\(2\\), got 3"):
        generate(model, [p, p], max_drafts=[1, 2, 3], **kw)
    with pytest.raises(ValueError, match="lengths\\[1\\] must be an int in"):
        split_prompts(torch.zeros(2, 4, dtype=torch.long), lengths=[2, 5])
    with pytest.raises(ValueError, match="prompts\\[0\\] must be a 1-D tensor"):
        split_prompts([p[None]])
    with pytest.raises(ValueError, match="cache must be"):  # a row's own error reaches the caller
        generate(model, [p, p], gen_length=32, block_length=32, cache="bogus")
