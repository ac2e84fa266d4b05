"""The walk goes through non-first drafts, several steps deep, and stays lossless (issue #25).

Drafts come from `walk_oracle.OracleFiller`: vanilla's true next states (up to 4 deep), near
misses of the first two, shuffled, after a decoy in row 0 that is never a state the walk
looks up. Every case asserts vanilla's tokens and steps, that rows other than 0 were accepted
and that some forward advanced 3 or more steps, for LLaDA (the bundled trained model), Dream
(tiny random weights) and SDAR (bundled `tiny-sdar` for Spiffy; a random one for the exact
SimSD variant, whose candidates come from a draft source that knows vanilla's tokens and
order), greedy and sampled, in every exact verification mode each model supports. A walk that
read any row but the matched one (e.g. always the first draft's logits) fails these cases.
"""

from __future__ import annotations

import functools

import pytest
import torch
from utils import TINY_MASK_ID, assert_close, tiny_qwen_config, tiny_random_llada
from walk_oracle import check_walk, vanilla_trajectory

from spiffy_triton.decoding import generate
from spiffy_triton.decoding.simsd import Proposal
from spiffy_triton.decoding.stats import PHASES, PhaseClock
from spiffy_triton.decoding.verify import Verifier
from spiffy_triton.models import DreamModel, load_model
from spiffy_triton.training.tinydata import heldout_prompts


@functools.cache
def bundled(name: str):
    return load_model(name, dtype=torch.float64, backend="torch")


@functools.cache
def bundled_prompts(name: str) -> tuple[torch.Tensor, ...]:
    tokenizer = bundled(name).tokenizer
    held = heldout_prompts(2)
    chosen = [held["arith"][0], held["code"][1]]
    return tuple(torch.tensor([tokenizer.encode(e.prompt)]) for e in chosen)


@functools.cache
def tiny_dream() -> DreamModel:
    config = tiny_qwen_config(model_type="Dream")
    return DreamModel(config, backend="torch").init_weights(1, std=0.5).double().eval()


DREAM_PROMPTS = (
    torch.tensor([[5, 17, 3, 40, 22, 9, 31]]),
    torch.tensor([[11, 2, 60, 33, 7]]),
)

# ------------------------------------------------------------------------------------ LLaDA

LLADA_RULES = {
    "greedy": {},
    "T0.7": {"temperature": 0.7, "seed": 21},
    "2tok": {"steps": 16},
    "random-T0.7": {"remasking": "random", "temperature": 0.7, "seed": 22},
}
LLADA_CASES = [
    (0, "greedy", None, "batch"),
    (1, "greedy", "prefix", "packed"),
    (0, "greedy", "dual", "packed"),
    (1, "greedy", "dual", "batch"),
    (1, "T0.7", None, "batch"),
    (0, "T0.7", "dual", "packed"),
    (1, "T0.7", "prefix", "batch"),
    (0, "2tok", "prefix", "packed"),
    (1, "random-T0.7", "dual", "packed"),
    (0, "random-T0.7", None, "batch"),
]


@pytest.mark.parametrize(
    "prompt, rule, cache, verify",
    LLADA_CASES,
    ids=[f"p{p}-{r}-{c or 'nocache'}-{v}" for p, r, c, v in LLADA_CASES],
)
def test_llada_walk_through_non_first_drafts(prompt, rule, cache, verify):
    check_walk(
        bundled("tiny"),
        bundled_prompts("tiny")[prompt],
        gen_length=16,
        block_length=8,
        cache=cache,
        verify=verify,
        backend="torch",
        order_seed=prompt,
        **LLADA_RULES[rule],
    )


# ------------------------------------------------------------------------------------ Dream

DREAM_RULES = {
    "maskgit-greedy": {"remasking": "maskgit_plus"},
    "margin-greedy": {"remasking": "topk_margin"},
    "entropy-T0.7": {"remasking": "entropy", "temperature": 0.7, "seed": 31},
    "maskgit-T0.7": {"remasking": "maskgit_plus", "temperature": 0.7, "seed": 32},
}
DREAM_CASES = [
    (0, "maskgit-greedy", None, "batch"),
    (1, "maskgit-T0.7", None, "batch"),
    (0, "entropy-T0.7", "prefix", "packed"),
    (1, "margin-greedy", "prefix", "batch"),
    (1, "maskgit-greedy", "dual", "packed"),
    (0, "maskgit-T0.7", "dual", "batch"),
    (0, "margin-greedy", "dual", "packed"),
    (1, "entropy-T0.7", None, "batch"),
]


@pytest.mark.parametrize(
    "prompt, rule, cache, verify",
    DREAM_CASES,
    ids=[f"p{p}-{r}-{c or 'nocache'}-{v}" for p, r, c, v in DREAM_CASES],
)
def test_dream_walk_through_non_first_drafts(prompt, rule, cache, verify):
    check_walk(
        tiny_dream(),
        DREAM_PROMPTS[prompt],
        gen_length=16,
        block_length=8,
        cache=cache,
        verify=verify,
        backend="torch",
        order_seed=prompt,
        **DREAM_RULES[rule],
    )


# ------------------------------------------------------------------------------------- SDAR

SDAR_RULES = {
    "static-greedy": {"remasking": "low_confidence_static"},
    "static-T0.7": {"remasking": "low_confidence_static", "temperature": 0.7, "seed": 41},
    "lowconf-T0.7": {"remasking": "low_confidence", "temperature": 0.7, "seed": 42},
    "dynamic-0.9": {"remasking": "low_confidence_dynamic", "threshold": 0.9},
}
SDAR_CASES = [
    (0, "static-greedy", None, "packed"),
    (1, "static-T0.7", None, "packed"),
    (0, "lowconf-T0.7", "prefix", "packed"),
    (1, "static-greedy", "prefix", "packed"),
    (0, "static-T0.7", "prefix", "batch"),
    (1, "dynamic-0.9", "prefix", "packed"),
]


@pytest.mark.parametrize(
    "prompt, rule, cache, verify",
    SDAR_CASES,
    ids=[f"p{p}-{r}-{c or 'nocache'}-{v}" for p, r, c, v in SDAR_CASES],
)
def test_sdar_walk_through_non_first_drafts(prompt, rule, cache, verify):
    check_walk(
        bundled("tiny-sdar"),
        bundled_prompts("tiny-sdar")[prompt],
        gen_length=16,
        block_length=8,
        cache=cache,
        verify=verify,
        backend="torch",
        min_deep=2 if "dynamic" in rule else 3,
        order_seed=prompt,
        **SDAR_RULES[rule],
    )


class TrajectoryDraft:
    """A SimSD draft source that knows vanilla's trajectory: its tokens, and as confidence
    the order in which vanilla committed them (earlier: more confident). SimSD-exact's chain
    of candidates is then vanilla's path, and the walk goes through all of them."""

    forwards = 0  # no model forward of its own

    def __init__(self, tokens: torch.Tensor, trajectory, mask_id: int):
        self.tokens = tokens
        self.mask_id = mask_id
        order = torch.zeros(tokens.shape[0], dtype=torch.float64)
        for k, (start, before, after) in enumerate(trajectory):
            for p, (b, a) in enumerate(zip(before, after)):
                if b == mask_id and a != mask_id:
                    order[start + p] = -k
        self.confidence = order

    def start(self, target, prompt_length):
        pass

    def propose(self, x, s, e):
        block = x[0, s:e].clone()
        masked = block == self.mask_id
        block[masked] = self.tokens[s:e][masked]
        return Proposal(block, self.confidence[s:e].clone())


@pytest.mark.parametrize(
    "prompt, rule, cache",
    [(0, "static-greedy", None), (1, "static-T0.7", "prefix"), (2, "lowconf-T0.7", None)],
)
def test_simsd_exact_walks_its_whole_candidate_chain(prompt, rule, cache):
    # A random-weight SDAR (blocks of 8): the trained one is so sharp that reading the wrong
    # candidate's logits one step on still picks the same tokens.
    from test_sdar import MATRIX_PROMPTS, tiny8

    model = tiny8()
    ids = MATRIX_PROMPTS[prompt]
    kwargs = dict(gen_length=16, block_length=8, cache=cache, backend="torch")
    kwargs.update(SDAR_RULES[rule])
    reference, trajectory = vanilla_trajectory(model, ids, **kwargs)
    draft = TrajectoryDraft(reference.tokens[0], trajectory, model.config.mask_token_id)
    exact = generate(model, ids, method="simsd-exact", draft=draft, **kwargs)
    assert exact.stats.exact
    assert torch.equal(exact.tokens, reference.tokens) and exact.steps == reference.steps
    assert max(exact.stats.steps_per_forward) >= 4, exact.stats.steps_per_forward
    assert exact.nfe < reference.nfe


# ------------------------------------------------------------------ verifier rows, one by one


@pytest.mark.parametrize(
    "cache, verify",
    [(None, "batch"), ("prefix", "packed"), ("prefix", "batch"), ("dual", "packed")],
)
def test_llada_verifier_gives_each_draft_its_own_logits(cache, verify):
    """The LLaDA verifier's draft rows are the logits of each draft state alone (the forward
    vanilla would run on it), on a random model where any leak between rows shows: the
    trained model is sharp enough that a draft seeing the root as well still picks the same
    tokens, so the lossless tests alone do not catch a layout that lets it."""
    model = tiny_random_llada(3, std=0.5)
    generator = torch.Generator().manual_seed(4)
    prompt = torch.randint(3, 24, (1, 6), generator=generator)
    s, e, t = 6, 10, 14
    x = torch.cat([prompt, torch.full((1, t - 6), TINY_MASK_ID)], dim=1)
    x[0, e + 1] = 7  # a suffix that is not all masks
    drafts = x[0, s:e].repeat(3, 1)
    drafts[0, 0], drafts[1, 1:3], drafts[2, :] = 5, torch.tensor([8, 9]), torch.arange(10, 14)
    verifier = Verifier(model, cache, verify, PhaseClock(dict.fromkeys(PHASES, 0.0), x.device))
    if cache is not None:
        verifier.prefill(x, s, e)
    root, draft_logits, _ = verifier(x, s, e, drafts)
    for i, state in enumerate([x[0, s:e], *drafts]):
        y = x.clone()
        y[0, s:e] = state
        if cache is None:
            alone = model(y)[0, s:e]
        else:
            first = e if cache == "dual" else t
            alone = model(y[:, s:first], position_ids=torch.arange(s, first), cache=verifier.kv)
            alone = alone[0, : e - s]
        got = root if i == 0 else draft_logits[i - 1]
        assert_close(got, alone, atol=1e-9, rtol=1e-9, name=f"row {i}")
