"""Draft filling and the `generate` API: shapes, statistics, modes, bad input.

Uses a small random-weight model (fast); losslessness on the bundled trained model is in
test_lossless.py.
"""

from __future__ import annotations

import pytest
import torch
from utils import TINY_MASK_ID, tiny_random_llada

from spiffy_triton.decoding import GenerateOutput, default_verify, generate, is_exact
from spiffy_triton.decoding.drafting import fill_drafts, geometric_mean_score, rank_masked_positions
from spiffy_triton.graph import DraftGraph
from spiffy_triton.models import LLaDAModel
from spiffy_triton.types import MarginalsOutput

MASK = TINY_MASK_ID


@pytest.fixture(scope="module")
def model():
    # std 0.2: peaked enough marginals for threshold rules to commit several tokens a step
    return tiny_random_llada(3, std=0.2)


@pytest.fixture(scope="module")
def prompt():
    return torch.tensor([[5, 9, 11, 4, 17, 8]])


# --------------------------------------------------------------------------- drafting


def p_last_from(top_tokens, top_probs) -> MarginalsOutput:
    tokens = torch.tensor(top_tokens)
    probs = torch.tensor(top_probs, dtype=torch.float32)
    n = tokens.shape[0]
    zeros = torch.zeros(n)
    return MarginalsOutput(tokens[:, 0], probs[:, 0], tokens, probs, zeros, zeros)


# 5 positions; top-2 tokens and probabilities per position.
TOKENS = [[10, 11], [12, 13], [14, MASK], [16, 17], [18, 19]]
PROBS = [[0.5, 0.2], [0.9, 0.05], [0.7, 0.1], [0.9, 0.01], [0.2, 0.1]]


def test_rank_masked_positions_orders_root_masked_by_top1_probability():
    root = torch.tensor([MASK, MASK, MASK, 7, MASK])  # position 3 already decoded
    ranked = rank_masked_positions(p_last_from(TOKENS, PROBS), root, MASK, backend="torch")
    assert ranked == [1, 2, 0, 4]  # 0.9, 0.7, 0.5, 0.2; position 3 is not masked


def test_fill_drafts_fills_formulas():
    root = torch.tensor([MASK, MASK, MASK, 7, MASK])
    graph = DraftGraph([[(1, 1)], [(1, 2)], [(1, 1), (2, 1)], [(3, 1), (4, 2)], [(2, 2)], [(5, 1)]])
    drafts = fill_drafts(graph, root, p_last_from(TOKENS, PROBS), MASK, backend="torch")
    # node 4 would write the mask id at position 2; node 5 needs 5 masked positions (4 exist)
    assert drafts.nodes == (0, 1, 2, 3)
    expected = [
        [MASK, 12, MASK, 7, MASK],
        [MASK, 13, MASK, 7, MASK],
        [MASK, 12, 14, 7, MASK],
        [10, MASK, MASK, 7, 19],
    ]
    assert drafts.states.tolist() == expected


def test_fill_drafts_dedupes_and_prunes():
    root = torch.tensor([MASK, MASK, MASK, 7, MASK])
    p_last = p_last_from(TOKENS, PROBS)
    graph = DraftGraph([[(1, 1)], [(2, 1)], [(1, 1), (2, 1)], [(1, 2)], [(2, 1), (1, 1), (3, 1)]])

    def same_everywhere(graph, root, p_last, mask_id):
        # a filler that maps two nodes to one state: the second must be dropped
        from spiffy_triton.decoding.drafting import DraftCandidate

        return [DraftCandidate(k % 2, (1,), (12,), (0.9,)) for k in range(3)]

    drafts = fill_drafts(graph, root, p_last, MASK, filler=same_everywhere)
    assert drafts.nodes == (0,) and drafts.states.tolist() == [[MASK, 12, MASK, 7, MASK]]

    pruned = fill_drafts(graph, root, p_last, MASK, max_drafts=2, backend="torch")
    # geometric means: n0 0.9, n1 0.7, n2 sqrt(.63)=.79, n3 0.05, n4 (.315)^(1/3)=.68
    assert pruned.nodes == (0, 2)
    assert len(fill_drafts(graph, root, p_last, MASK, max_drafts=10, backend="torch")) == 5


def test_geometric_mean_score():
    from spiffy_triton.decoding.drafting import DraftCandidate

    assert geometric_mean_score(DraftCandidate(0, (0, 1), (1, 2), (0.25, 1.0))) == pytest.approx(
        0.5
    )
    assert geometric_mean_score(DraftCandidate(0, (0,), (1,), (0.0,))) == 0.0


def test_fill_drafts_errors():
    root = torch.tensor([MASK, MASK, MASK, 7, MASK])
    one_token = p_last_from([[t[0]] for t in TOKENS], [[p[0]] for p in PROBS])
    with pytest.raises(ValueError, match="top_k=1"):
        fill_drafts(DraftGraph([[(1, 2)]]), root, one_token, MASK, backend="torch")
    with pytest.raises(ValueError, match="rows"):
        fill_drafts(DraftGraph([[(1, 1)]]), root[:3], one_token, MASK, backend="torch")


# --------------------------------------------------------------------------- generate


def test_vanilla_output_and_stats(model, prompt):
    out = generate(model, prompt, gen_length=16, block_length=8)
    assert isinstance(out, GenerateOutput)
    assert out.tokens.shape == (1, 22) and out.tokens.dtype == torch.int64
    assert torch.equal(out.tokens[:, :6], prompt)
    assert not (out.tokens == MASK).any()
    assert out.nfe == out.steps == 16  # one token per step, one forward per step
    assert dict(out.stats.steps_per_forward) == {1: 16}
    assert out.stats.exact and out.stats.graph is None
    assert set(out.stats.time_s) >= {"model", "drafting", "layout", "marginals", "walk", "total"}


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
def test_spiffy_stats_are_consistent(model, prompt, cache):
    out = generate(
        model, prompt, gen_length=16, block_length=8, cache=cache, graph=6, max_drafts=None
    )
    stats = out.stats
    assert stats.verify == default_verify(cache) and stats.exact
    assert sum(stats.steps_per_forward.values()) == out.nfe
    assert sum(k * v for k, v in stats.steps_per_forward.items()) == out.steps == 16
    assert len(stats.node_verified) == 6
    assert sum(stats.node_verified) == stats.drafts_verified
    assert all(a <= v for a, v in zip(stats.node_accepted, stats.node_verified))
    assert sum(stats.node_accepted) == out.steps - out.nfe  # every accepted draft saves a forward
    assert all(0.0 <= a <= 1.0 for a in stats.acceptance)
    if cache is not None:
        # the block-start prefill of each of the 2 blocks runs without drafts
        assert stats.drafts_verified <= (out.nfe - 2) * 6
    d = stats.to_dict()
    assert d["nfe"] == out.nfe and d["steps_per_forward"]
    assert stats.tokens_per_second > 0


def test_graph_forms_agree(model, prompt, tmp_path):
    path = DraftGraph.default(4).save(tmp_path / "g.json")
    runs = [
        generate(model, prompt, gen_length=16, block_length=8, graph=g, max_drafts=None)
        for g in (4, DraftGraph.default(4), str(path), path)
    ]
    for r in runs[1:]:
        assert torch.equal(r.tokens, runs[0].tokens) and r.nfe == runs[0].nfe


def test_max_drafts_limits_verification(model, prompt):
    full = generate(
        model, prompt, gen_length=16, block_length=8, graph=8, cache="dual", max_drafts=None
    )
    pruned = generate(
        model, prompt, gen_length=16, block_length=8, graph=8, cache="dual", max_drafts=2
    )
    assert pruned.stats.drafts_verified <= 2 * pruned.nfe < full.stats.drafts_verified
    assert torch.equal(pruned.tokens, full.tokens)


def test_exactness_flags():
    assert not is_exact(None, "packed")
    assert is_exact(None, "batch") and is_exact("dual", "packed") and is_exact("prefix", "packed")
    assert default_verify(None) == "batch"
    assert default_verify("dual") == default_verify("prefix") == "packed"


def test_packed_uncached_is_flagged_near_lossless(model, prompt):
    out = generate(model, prompt, gen_length=8, block_length=8, graph=2, verify="packed")
    assert not out.stats.exact and out.stats.verify == "packed"


def test_nfe_counts_prefill(model, prompt):
    # With a cache, the block-start prefill is a forward and makes the block's first step.
    out = generate(model, prompt, gen_length=16, block_length=8, cache="dual", steps=8)
    assert out.nfe == out.steps == 8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gen_length": 12, "block_length": 8}, "multiple of block_length"),
        ({"gen_length": 16, "block_length": 8, "steps": 5}, "divide evenly"),
        ({"gen_length": 16, "block_length": 8, "steps": 32}, "at least one token"),
        # an int budget fits the block (issue #21) unless the block is too short for it
        ({"gen_length": 16, "block_length": 1, "graph": 16}, r"block_length=1\): budget 16"),
        ({"gen_length": 64, "block_length": 8}, "max_sequence_length"),
        ({"gen_length": 0, "block_length": 8}, "gen_length"),
        ({"gen_length": 8, "block_length": 0}, "block_length"),
        ({"gen_length": 8, "block_length": 8, "cache": "full"}, "cache"),
        ({"gen_length": 8, "block_length": 8, "verify": "tree"}, "verify"),
        ({"gen_length": 8, "block_length": 8, "graph": 0}, "budget"),
        ({"gen_length": 8, "block_length": 8, "graph": 2.5}, "graph"),
        ({"gen_length": 8, "block_length": 8, "max_drafts": 2}, "needs a graph"),
        ({"gen_length": 8, "block_length": 8, "graph": 2, "max_drafts": 0}, "max_drafts"),
        ({"gen_length": 8, "block_length": 8, "threshold": 0.9, "steps": 8}, "steps"),
        ({"gen_length": 8, "block_length": 8, "temperature": -0.5}, "temperature"),
        ({"gen_length": 8, "block_length": 8, "remasking": "lowest"}, "remasking"),
        ({"gen_length": 8, "block_length": 8, "seed": -1}, "seed"),
        ({"gen_length": 8, "block_length": 8, "graph": [[(1, 9)]]}, "graph"),
    ],
)
def test_bad_arguments(model, prompt, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(model, prompt, **kwargs)


@pytest.mark.parametrize(
    "prompt_ids, message",
    [
        (torch.tensor([[5, MASK, 7]]), "mask id"),
        (torch.zeros(1, 0, dtype=torch.int64), "empty"),
        (torch.tensor([5, 6, 7]), "2-D"),
        (torch.tensor([[5.0, 6.0]]), "int64"),
        (torch.tensor([[5, 99]]), "vocabulary"),
        ([[5, 6]], "1-D tensor of ids"),
    ],
)
def test_bad_prompts(model, prompt_ids, message):
    with pytest.raises(ValueError, match=message):
        generate(model, prompt_ids, gen_length=8, block_length=8)


def test_graph_too_deep_for_block(model, prompt):
    graph = DraftGraph([[(1, 1)], [(1, 1), (9, 1)]])
    with pytest.raises(ValueError, match="position rank 9"):
        generate(model, prompt, gen_length=16, block_length=8, graph=graph)


def upstream_llada_generate(
    model, prompt, *, gen_length, block_length, steps, threshold=None, rank_dtype=torch.float64
):
    """LLaDA's generate() at temperature 0 with low-confidence remasking (and Fast-dLLM's
    threshold variant), transcribed independently: full forward per step, float64 softmax and
    ranking as Fast-dLLM (`rank_dtype` float32 rounds the confidence as LLaDA's float32 softmax
    would), confidence -inf outside the current block, top-k commit, Fast-dLLM's threshold
    keeping every confidence >= threshold (at least one). Returns the final ids, the forwards
    and the state after every step."""
    x = torch.full((1, prompt.shape[1] + gen_length), MASK, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt
    num_blocks = gen_length // block_length
    nfe = 0
    states = []
    for b in range(num_blocks):
        start = prompt.shape[1] + b * block_length
        end = start + block_length
        per_block = steps // num_blocks
        counts = [block_length // per_block] * per_block
        for i in range(block_length % per_block):
            counts[i] += 1
        k = 0
        while (x[:, start:end] == MASK).any():
            logits = model(x).double()
            nfe += 1
            logits[..., MASK] = float("-inf")  # generate() never commits the mask token
            x0 = logits.argmax(-1)
            p = torch.softmax(logits, dim=-1)
            conf = torch.gather(p, -1, x0[..., None])[..., 0].to(rank_dtype)
            conf[:, end:] = float("-inf")
            conf = torch.where(x == MASK, conf, torch.tensor(float("-inf"), dtype=rank_dtype))
            if threshold is None:
                n = counts[k]
            else:
                masked = int((x[:, start:end] == MASK).sum())
                n = max(1, int((conf[0] >= threshold).sum()))
                n = min(n, masked)
            # torch.topk's order among exact ties is unspecified: sort stably (lower position)
            chosen = torch.sort(conf[0], descending=True, stable=True).indices[:n]
            x[0, chosen] = x0[0, chosen]
            states.append(x.clone())
            k += 1
    return x, nfe, states


@pytest.mark.parametrize(
    "kwargs",
    [{"steps": 16}, {"steps": 8}, {"threshold": 0.2}],
    ids=["1tok", "2tok", "threshold"],
)
def test_vanilla_matches_upstream_llada_loop(model, prompt, kwargs):
    expected, nfe, _ = upstream_llada_generate(
        model,
        prompt,
        gen_length=16,
        block_length=8,
        steps=kwargs.get("steps", 16),
        threshold=kwargs.get("threshold"),
    )
    out = generate(model, prompt, gen_length=16, block_length=8, **kwargs)
    assert torch.equal(out.tokens, expected) and out.nfe == nfe
    if "threshold" in kwargs:
        assert out.nfe < 16  # several tokens in some steps


class NearTieLLaDA(LLaDAModel):
    """A random LLaDA whose every row is near-certain: the base model's argmax token gets
    probability 1 / (1 + eps), eps in [3.0e-7, 3.6e-7) a function of the position and the
    input ids, so float32 rounds most confidences of a step to the same one or two values."""

    def forward(self, input_ids, position_ids=None, layout=None, cache=None):
        logits = super().forward(input_ids, position_ids, layout, cache)
        b, t, v = logits.shape
        pos = torch.arange(t, dtype=torch.float64)
        salt = input_ids.to(torch.float64).sum(-1, keepdim=True)
        eps = 3.0e-7 + 6e-9 * torch.remainder(pos * 7 + salt * 3, 10)  # [b, t]
        out = torch.log(eps / (v - 2))[..., None].expand(b, t, v).clone()
        out.scatter_(-1, logits.argmax(-1, keepdim=True), 0.0)
        out[..., MASK] = 5.0  # excluded by every decoder
        return out.to(logits.dtype)


@pytest.mark.parametrize(
    "kwargs", [{"steps": 16}, {"steps": 8}, {"threshold": 0.99999966}], ids=["1tok", "2tok", "tau"]
)
def test_vanilla_steps_match_float64_ranking_with_near_ties(prompt, kwargs):
    """Step by step, vanilla's states are those of an independent float64 implementation of
    the rule, on a model whose confidences tie in float32 (issue #21); the float32 ranking
    would walk other states, so the test can tell the two apart."""
    model = tiny_random_llada(3, std=0.2, model_class=NearTieLLaDA)
    seen = []
    original = model.forward

    def recording(input_ids, *args, **kw):
        seen.append(input_ids.clone())
        return original(input_ids, *args, **kw)

    model.forward = recording
    args = dict(gen_length=16, block_length=8, steps=kwargs.get("steps", 16))
    expected, nfe, states = upstream_llada_generate(
        model, prompt, threshold=kwargs.get("threshold"), **args
    )
    _, _, float32_states = upstream_llada_generate(
        model, prompt, threshold=kwargs.get("threshold"), rank_dtype=torch.float32, **args
    )
    assert [s.tolist() for s in states] != [s.tolist() for s in float32_states]
    seen.clear()
    out = generate(model, prompt, gen_length=16, block_length=8, **kwargs)
    assert out.nfe == nfe and torch.equal(out.tokens, expected)
    # each forward's input is the state after the previous step
    assert [s.tolist() for s in seen[1:]] == [s.tolist() for s in states[:-1]]
    spiffy = generate(
        model, prompt, gen_length=16, block_length=8, graph=4, max_drafts=None, **kwargs
    )
    assert torch.equal(spiffy.tokens, expected) and spiffy.nfe <= nfe


def test_api_takes_the_command_lines_spellings(model, prompt):
    """issue #21: cache='none' is None and max_drafts='all' is None, as the CLI spells them."""
    kw = dict(gen_length=16, block_length=8)
    a = generate(model, prompt, cache=None, graph=4, max_drafts=None, **kw)
    b = generate(model, prompt, cache="none", graph=4, max_drafts="all", **kw)
    assert torch.equal(a.tokens, b.tokens) and a.nfe == b.nfe and b.stats.cache is None
    assert b.stats.draft_budget is None  # "all" is not auto
    with pytest.raises(ValueError, match="cache must be one of"):
        generate(model, prompt, cache="None", **kw)
    with pytest.raises(ValueError, match="max_drafts must be 'auto'"):
        generate(model, prompt, graph=4, max_drafts="every", **kw)


def test_meta_device_prompt_or_model_is_a_clear_error(prompt):
    model = tiny_random_llada(3)
    with pytest.raises(ValueError, match="prompt_ids is on the meta device"):
        generate(model, prompt.to("meta"), gen_length=8, block_length=8)
    with pytest.raises(ValueError, match="model is on the meta device"):
        generate(model.to("meta"), prompt, gen_length=8, block_length=8)


def test_forwards_without_packed_drafts_take_the_plain_attention_path(model, prompt, monkeypatch):
    """issue #21: a root-only forward (vanilla, no cache), and drafts as batch rows, see the
    whole sequence: the model's plain attention (SDPA), not the graph-masked path, as
    upstream's vanilla runs; packed drafts still need the graph layout."""
    from spiffy_triton.models import llada

    calls = []
    real = llada.graph_attention
    monkeypatch.setattr(llada, "graph_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    kw = dict(gen_length=16, block_length=8)
    vanilla = generate(model, prompt, **kw)
    batch = generate(model, prompt, graph=4, max_drafts=None, verify="batch", **kw)
    assert calls == [] and torch.equal(batch.tokens, vanilla.tokens)
    assert batch.stats.drafts_verified > 0
    generate(model, prompt, graph=4, max_drafts=None, verify="packed", **kw)
    assert calls  # packed drafts: graph attention
    # With a cache the root-only forward keeps the layout: it then does the arithmetic of a
    # packed draft row, so vanilla equals Spiffy bit for bit (docs/PERFORMANCE.md).
    calls.clear()
    generate(model, prompt, cache="dual", **kw)
    assert calls


def test_batch_row_drafts_on_the_plain_path_stay_exact_in_bfloat16(prompt):
    """The plain path (SDPA) is batch-invariant: a draft's batch row gives the logits vanilla's
    root-only forward gives for that state, in bf16 too, so Spiffy's tokens are vanilla's."""
    model = tiny_random_llada(5, std=0.2).to(torch.bfloat16)
    kw = dict(gen_length=16, block_length=8)
    for rule in ({}, {"threshold": 0.5}, {"temperature": 0.8, "seed": 3}):
        vanilla = generate(model, prompt, **kw, **rule)
        spiffy = generate(model, prompt, graph=6, max_drafts=None, verify="batch", **kw, **rule)
        assert torch.equal(spiffy.tokens, vanilla.tokens) and spiffy.steps == vanilla.steps
        assert spiffy.stats.drafts_verified > 0
