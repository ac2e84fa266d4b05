"""Spiffy is lossless: on the bundled trained model in float64, Spiffy's tokens and step count
equal vanilla decoding's exactly, for every exact verification mode.

Over 100 (prompt, configuration) pairs: greedy and T = 0.7 sampling, LLaDA's 1- and 2-token
schedules, low-confidence and random remasking, Fast-dLLM threshold and factor rules; no
cache (drafts as batch rows), prefix and dual caches (packed, and batch rows); default graphs
of several budgets, a graph with second-rank tokens, dynamic pruning, and the default cost-aware
draft budget. A few pairs run with
the Triton backend (attention and marginals kernels) under the interpreter, in float32.

The uncached packed layout is near-lossless only (context rows see the root, not the draft);
benchmarks/nfe.py measures how often it differs (docs/DECODING.md).
"""

from __future__ import annotations

import functools

import pytest
import torch
from walk_oracle import decoy_first

from spiffy_triton.decoding import generate
from spiffy_triton.graph import DraftGraph
from spiffy_triton.models import load_model
from spiffy_triton.training.tinydata import heldout_prompts

GEN_LENGTH = 32
BLOCK_LENGTH = 16

RULES = {
    "greedy": {},
    "T0.7": {"temperature": 0.7, "seed": 11},
    "thr0.9": {"threshold": 0.9},
    "thr0.7-T0.7": {"threshold": 0.7, "temperature": 0.7, "seed": 12},
    "2tok": {"steps": GEN_LENGTH // 2},
    "random-T0.7": {"remasking": "random", "temperature": 0.7, "seed": 13},
    "factor1": {"factor": 1.0},
}
MAIN_RULES = ("greedy", "T0.7", "thr0.9", "thr0.7-T0.7")
EXTRA_RULES = ("2tok", "random-T0.7", "factor1")

# (cache, verify): the exact modes.
PACKED_MODES = ((None, "batch"), ("prefix", "packed"), ("dual", "packed"))
BATCH_MODES = (("prefix", "batch"), ("dual", "batch"))

GRAPHS = {
    "D3": {"graph": 3, "max_drafts": None},
    "D8": {"graph": 8, "max_drafts": None},
    "tok2": {
        "graph": DraftGraph(
            [[(1, 1)], [(1, 2)], [(2, 1)], [(1, 1), (2, 1)], [(1, 2), (2, 1)], [(1, 1), (2, 2)]]
        ),
        "max_drafts": None,
    },
    "D16-prune4": {"graph": 16, "max_drafts": 4},
    "D8-auto": {"graph": 8},  # the default max_drafts="auto" (cost-aware budget)
}
GRAPH_NAMES = tuple(GRAPHS)
NUM_PROMPTS = 4


@functools.cache
def prompts() -> tuple[torch.Tensor, ...]:
    tokenizer = bundled(torch.float64, "torch").tokenizer
    held = heldout_prompts(2)
    chosen = [held["arith"][0], held["code"][0], held["arith"][1], held["code"][1]]
    return tuple(torch.tensor([tokenizer.encode(e.prompt)]) for e in chosen)


@functools.cache
def bundled(dtype: torch.dtype, backend: str):
    return load_model("tiny", dtype=dtype, backend=backend)


def make_cases():
    cases = []
    for p in range(NUM_PROMPTS):
        for r, rule in enumerate(MAIN_RULES + EXTRA_RULES):
            for m, (cache, verify) in enumerate(PACKED_MODES):
                graph = GRAPH_NAMES[(p + r + m) % len(GRAPH_NAMES)]
                cases.append((p, rule, cache, verify, graph))
        for r, rule in enumerate(MAIN_RULES[:3]):
            for m, (cache, verify) in enumerate(BATCH_MODES):
                if rule == "thr0.9" and p >= 2:
                    continue
                graph = GRAPH_NAMES[(p + r + m + 1) % len(GRAPH_NAMES)]
                cases.append((p, rule, cache, verify, graph))
    return cases


CASES = make_cases()


def case_id(case) -> str:
    p, rule, cache, verify, graph = case
    return f"p{p}-{rule}-{cache or 'nocache'}-{verify}-{graph}"


@functools.cache
def vanilla(prompt_index, rule, cache, dtype, backend, gen_length, block_length):
    model = bundled(dtype, backend)
    return generate(
        model,
        prompts()[prompt_index],
        gen_length=gen_length,
        block_length=block_length,
        cache=cache,
        backend=backend,
        **RULES[rule],
    )


def check_lossless(
    case,
    dtype=torch.float64,
    backend="torch",
    gen_length=GEN_LENGTH,
    block_length=BLOCK_LENGTH,
    decoy=True,
):
    """Spiffy equals vanilla on `case`. With `decoy` (not for the cost-aware budget, which
    picks its own drafts), row 0 of every forward is a decoy state the walk never looks up
    (`walk_oracle.decoy_first`) and the graph's drafts follow: a walk that read any row but the
    one it matched would diverge as soon as a draft is accepted."""
    p, rule, cache, verify, graph = case
    reference = vanilla(p, rule, cache, dtype, backend, gen_length, block_length)
    model = bundled(dtype, backend)
    if decoy and GRAPHS[graph].get("max_drafts", "auto") != "auto":
        filler = decoy_first(model.config.vocab_size, backend=backend)
    else:
        filler = None
    spiffy = generate(
        bundled(dtype, backend),
        prompts()[p],
        gen_length=gen_length,
        block_length=block_length,
        cache=cache,
        verify=verify,
        backend=backend,
        filler=filler,
        **RULES[rule],
        **GRAPHS[graph],
    )
    assert spiffy.stats.exact
    mismatch = (spiffy.tokens != reference.tokens).nonzero()[:, 1].tolist()
    assert not mismatch, f"{case_id(case)}: tokens differ from vanilla at positions {mismatch}"
    assert spiffy.steps == reference.steps
    assert spiffy.nfe <= reference.nfe
    assert sum(k * n for k, n in spiffy.stats.steps_per_forward.items()) == spiffy.steps
    return reference, spiffy


def test_at_least_100_pairs():
    assert len(CASES) >= 100
    assert {c[4] for c in CASES} == set(GRAPHS)
    assert {(c[2], c[3]) for c in CASES} == set(PACKED_MODES + BATCH_MODES)
    assert {c[1] for c in CASES} == set(RULES)


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.xdist_group(f"lossless-p{c[0]}")) for c in CASES],
    ids=case_id,
)
def test_spiffy_equals_vanilla(case):
    check_lossless(case)


def test_spiffy_saves_forwards_on_the_trained_model():
    # Over the greedy 1-token pairs the trained model's drafts are accepted: fewer forwards.
    saved = []
    for p in range(NUM_PROMPTS):
        reference, spiffy = check_lossless((p, "greedy", "dual", "packed", "D8"), decoy=False)
        saved.append(reference.nfe - spiffy.nfe)
    assert sum(saved) > 0, saved


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [(0, "greedy", "dual", "packed", "D3"), (1, "thr0.7-T0.7", "prefix", "packed", "tok2")],
    ids=case_id,
)
def test_spiffy_equals_vanilla_triton_backend(case):
    # Attention and marginals through the Triton kernels (interpreter on CPU), float32; one
    # block of 8 keeps the interpreter's time small.
    check_lossless(case, dtype=torch.float32, backend="triton", gen_length=8, block_length=8)


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [(0, "greedy", None, "batch", "D3"), (2, "T0.7", "dual", "packed", "D8")],
    ids=case_id,
)
def test_triton_backend_two_blocks_equals_torch_backend(case):
    # Two blocks of 8 on the Triton backend (interpreter on CPU), float32: without a cache the
    # drafts are batch rows and the second block starts from the first's hint rows; with the
    # dual cache the prefill moves the cache into the second block. Vanilla on the Triton
    # backend gives the torch backend's tokens, and Spiffy gives vanilla's.
    p, rule, cache, _, _ = case
    reference, spiffy = check_lossless(
        case, dtype=torch.float32, backend="triton", gen_length=16, block_length=8
    )
    on_torch = vanilla(p, rule, cache, torch.float32, "torch", 16, 8)
    assert torch.equal(reference.tokens, on_torch.tokens)
    assert reference.steps == on_torch.steps == 16
    assert spiffy.nfe < reference.nfe
