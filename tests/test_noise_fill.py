"""Noise-aware draft filling (spiffy_triton/noise_fill.py): the decoder's noise at chosen
vocabulary ids, the predicted trajectory (equal to the decoder's when the logits do not move),
agreement with plain filling at T = 0, bad input, and lossless decoding with it at T > 0 on the
bundled trained model in float64.
"""

from __future__ import annotations

import functools

import pytest
import torch

from spiffy_triton.contract import gumbel_noise
from spiffy_triton.decoding import generate
from spiffy_triton.decoding.budget import AutoDraftBudget
from spiffy_triton.decoding.cost_model import VerifyCostModel
from spiffy_triton.decoding.drafting import fill_drafts, probability_filler
from spiffy_triton.decoding.noise_fill import NoiseAwareFiller, gumbel_at
from spiffy_triton.decoding.rules import TransitionRule, block_marginals, num_transfer_tokens
from spiffy_triton.graph import DraftGraph
from spiffy_triton.models import load_model
from spiffy_triton.training.tinydata import heldout_prompts

MASK = 2


def test_gumbel_at_is_the_decoders_noise():
    gen = torch.Generator().manual_seed(0)
    vocab = 5000  # several Philox lanes and counter chunks
    positions = torch.tensor([0, 3, 700, 2**32 + 5])
    ids = torch.randint(0, vocab, (4, 9), generator=gen)
    for seed, step in ((0, 0), (7, 11), (2**40 + 3, 2**31)):
        full = gumbel_noise(seed, step, positions, vocab)
        assert torch.equal(gumbel_at(seed, step, positions, ids), full.gather(1, ids))


def test_gumbel_at_rejects_bad_input():
    with pytest.raises(ValueError, match="vocab_ids must be"):
        gumbel_at(0, 0, torch.tensor([1, 2]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=">= 0"):
        gumbel_at(0, 0, torch.tensor([1]), torch.tensor([[-1]]))


def random_block(length: int, vocab: int, seed: int, masked: list[int] | None = None):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(length, vocab, generator=gen, dtype=torch.float64) * 2.0
    root = torch.full((length,), MASK, dtype=torch.int64)
    for p in masked or []:
        root[p] = 5
    return logits, root


# node k: the first k + 1 positions with their first tokens
CHAIN = DraftGraph([[(i, 1) for i in range(1, k + 2)] for k in range(6)])


@pytest.mark.parametrize(
    "rule_kwargs",
    [
        {"temperature": 0.7, "schedule": (1,) * 8},
        {"temperature": 1.0, "schedule": (2,) * 4},
        {"temperature": 0.3, "threshold": 0.5},
        {"temperature": 0.7, "remasking": "random", "schedule": (1,) * 8},
        {"temperature": 0.0, "remasking": "random", "schedule": (1,) * 8},
    ],
    ids=["T0.7", "T1-2tok", "T0.3-thr", "T0.7-random", "T0-random"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_drafts_follow_the_decoders_trajectory_when_logits_stay(rule_kwargs, seed):
    """If the model's logits did not change from state to state, the chain of noise-aware
    drafts would be exactly the states the decoder goes through (vocab <= top_k, so the filler
    sees every token)."""
    length, vocab = 8, 8
    logits, root = random_block(length, vocab, seed, masked=[3])
    rule = TransitionRule(mask_id=MASK, seed=seed + 10, **rule_kwargs)
    positions = torch.arange(40, 40 + length)
    step, block_step = 5, 1 if rule.schedule else 0
    p_last = block_marginals(
        logits, top_k=vocab, temperature=0.0, seed=0, step=0, positions=positions, mask_id=MASK
    )
    filler = NoiseAwareFiller(top_k=vocab, backend="torch")
    filler.begin(rule=rule, step=step, block_step=block_step, positions=positions)
    drafts = {c.node: c for c in filler(CHAIN, root, p_last, MASK)}
    state, trajectory = root, []
    for d in range(6):
        if (rule.schedule is not None and block_step + d >= len(rule.schedule)) or not bool(
            (state == MASK).any()
        ):
            break
        state, _ = rule(
            logits, state, step=step + d, block_step=block_step + d, positions=positions
        )
        trajectory.append(state)
    # node k (k + 1 pairs) is the trajectory state with k + 1 positions decoded, if any
    compared = 0
    for node, candidate in drafts.items():
        filled = root.clone()
        filled[list(candidate.positions)] = torch.tensor(candidate.tokens)
        reached = [s for s in trajectory if int((s != root).sum()) == node + 1]
        if reached:
            assert torch.equal(filled, reached[0]), (node, filled, reached[0])
            compared += 1
    assert compared >= 1


def test_at_temperature_zero_it_fills_like_the_plain_filler():
    graph = DraftGraph.default(12)
    for seed in range(4):
        logits, root = random_block(16, 40, seed, masked=[2, 9])
        positions = torch.arange(16)
        p_last = block_marginals(
            logits, top_k=8, temperature=0.0, seed=0, step=0, positions=positions, mask_id=MASK
        )
        rule = TransitionRule(mask_id=MASK, schedule=tuple(num_transfer_tokens(16, 16)))
        filler = NoiseAwareFiller(backend="torch")
        filler.begin(rule=rule, step=3, block_step=2, positions=positions)
        noise = filler(graph, root, p_last, MASK)
        plain = probability_filler(graph, root, p_last, MASK, backend="torch")
        assert noise == plain


def test_noise_changes_the_drafts_at_high_temperature():
    logits, root = random_block(16, 40, 0)
    positions = torch.arange(16)
    p_last = block_marginals(
        logits, top_k=8, temperature=0.0, seed=0, step=0, positions=positions, mask_id=MASK
    )
    rule = TransitionRule(mask_id=MASK, temperature=1.0, seed=3, schedule=(1,) * 16)
    filler = NoiseAwareFiller(backend="torch")
    filler.begin(rule=rule, step=0, block_step=0, positions=positions)
    graph = DraftGraph.default(8)
    assert filler(graph, root, p_last, MASK) != probability_filler(
        graph, root, p_last, MASK, backend="torch"
    )


def test_bad_input():
    logits, root = random_block(8, 8, 0)
    positions = torch.arange(8)
    p_last = block_marginals(
        logits, top_k=2, temperature=0.0, seed=0, step=0, positions=positions, mask_id=MASK
    )
    rule = TransitionRule(mask_id=MASK, temperature=0.5, schedule=(1,) * 8)
    filler = NoiseAwareFiller(backend="torch")
    with pytest.raises(RuntimeError, match="begin"):
        filler(CHAIN, root, p_last, MASK)
    with pytest.raises(ValueError, match="TransitionRule"):
        filler.begin(rule="greedy", step=0, block_step=0, positions=positions)
    filler.begin(rule=rule, step=0, block_step=0, positions=positions[:4])
    with pytest.raises(ValueError, match="4 positions"):
        filler(CHAIN, root, p_last, MASK)
    filler.begin(rule=rule, step=0, block_step=0, positions=positions)
    with pytest.raises(ValueError, match="token rank 3"):
        filler(DraftGraph([[(1, 3)]]), root, p_last, MASK)
    with pytest.raises(ValueError, match="mask_id"):
        filler(CHAIN, root, p_last, 3)
    for top_k in (0, 9, True):
        with pytest.raises(ValueError, match="top_k"):
            NoiseAwareFiller(top_k=top_k)
    model = load_model("tiny", dtype=torch.float64, backend="torch")
    with pytest.raises(ValueError, match="filler must be"):
        generate(model, torch.tensor([[5, 6]]), gen_length=8, block_length=8, graph=2, filler="x")


def test_fill_drafts_accepts_it():
    logits, root = random_block(8, 8, 1)
    positions = torch.arange(8)
    p_last = block_marginals(
        logits, top_k=8, temperature=0.0, seed=0, step=0, positions=positions, mask_id=MASK
    )
    filler = NoiseAwareFiller(backend="torch")
    filler.begin(
        rule=TransitionRule(mask_id=MASK, temperature=0.7, schedule=(1,) * 8),
        step=0,
        block_step=0,
        positions=positions,
    )
    drafts = fill_drafts(CHAIN, root, p_last, MASK, filler=filler, backend="torch")
    assert len(drafts) == 6 and drafts.states.shape == (6, 8)
    assert [int((s != MASK).sum()) for s in drafts.states] == [1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------------ losslessness


@functools.cache
def bundled():
    return load_model("tiny", dtype=torch.float64, backend="torch")


@functools.cache
def prompt():
    model = bundled()
    return torch.tensor([model.tokenizer.encode(heldout_prompts(1)["arith"][0].prompt)])


@functools.cache
def vanilla(temperature: float, cache: str | None, threshold: float | None):
    return generate(bundled(), prompt(), **lossless_kwargs(temperature, cache, threshold))


def lossless_kwargs(temperature, cache, threshold) -> dict:
    kw = {"gen_length": 16, "block_length": 16, "backend": "torch", "seed": 21}
    return kw | {"temperature": temperature, "cache": cache, "threshold": threshold}


@pytest.mark.slow
@pytest.mark.parametrize(
    "temperature, cache, threshold",
    [(0.3, "dual", None), (1.0, "dual", None), (0.7, None, None), (1.0, "prefix", 0.99)],
)  # fmt: skip
def test_noise_aware_filling_is_lossless(temperature, cache, threshold):
    """Float64, bundled trained model: the same tokens and steps as vanilla sampling, with
    drafts actually walked through (T = 0.7 with the dual cache: the auto-budget test). The
    bundled model is confident: at threshold 0.7 it fills all 16 tokens in one step and no
    draft is left to walk, so the threshold case uses 0.99 (3 vanilla steps, measured)."""
    kw = lossless_kwargs(temperature, cache, threshold)
    out = generate(bundled(), prompt(), graph=8, max_drafts=None, filler="noise", **kw)
    reference = vanilla(temperature, cache, threshold)
    assert torch.equal(out.tokens, reference.tokens) and out.steps == reference.steps
    assert sum(out.stats.node_accepted) > 0


@pytest.mark.slow
def test_noise_aware_with_auto_budget_is_lossless():
    # A given cost model (the probe is tested in test_cost_model.py) under which drafts pay.
    budget = AutoDraftBudget(VerifyCostModel(20.0, 0.05))
    kw = lossless_kwargs(0.7, "dual", None)
    out = generate(bundled(), prompt(), graph=8, max_drafts=budget, filler="noise", **kw)
    reference = vanilla(0.7, "dual", None)
    assert torch.equal(out.tokens, reference.tokens) and out.steps == reference.steps
    assert out.stats.drafts_verified > 0 and out.stats.draft_budget["mean_drafts"] > 0
