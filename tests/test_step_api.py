"""The step API (`SpiffyStepper`): a foreign loop (examples/llada_style_generate.py, written like
LLaDA's reference ``generate``) reproduces `generate`'s tokens and forward count exactly; a
dual-cache loop with packed drafts does too; argument errors name the argument."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from spiffy_triton import SpiffyStepper, generate, load_model
from spiffy_triton.layout import SegmentLayout

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "llada_style_generate.py"


def _example():
    spec = importlib.util.spec_from_file_location("llada_style_generate", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model():
    return load_model("tiny", dtype=torch.float32, backend="torch")


def _prompt(model, text="Q: 4+5+6=?\nA: "):
    return torch.tensor([model.tokenizer.encode(text)])


RULES = {
    "greedy": dict(),
    "sampled": dict(temperature=0.8, seed=7),
    "half-steps": dict(steps=32),
}


@pytest.mark.parametrize("graph", [None, 8])
@pytest.mark.parametrize("rule", sorted(RULES))
def test_llada_style_loop_reproduces_generate(model, graph, rule):
    kw = RULES[rule]
    prompt = _prompt(model)
    steps = kw.get("steps", 64)
    got, nfe = _example().generate(
        model,
        prompt,
        steps=steps,
        gen_length=64,
        block_length=32,
        temperature=kw.get("temperature", 0.0),
        mask_id=model.config.mask_token_id,
        graph=graph,
        seed=kw.get("seed", 0),
    )
    want = generate(
        model, prompt, gen_length=64, block_length=32, graph=graph, max_drafts=None, **kw
    )
    assert torch.equal(got, want.tokens)
    assert nfe == want.nfe
    if graph is not None:
        vanilla = generate(model, prompt, gen_length=64, block_length=32, **kw)
        assert torch.equal(got, vanilla.tokens) and nfe < vanilla.nfe  # lossless, fewer calls


def test_dual_cache_packed_loop_reproduces_generate(model):
    """A Fast-dLLM-style loop: the caller's prefill at each block start, then packed verify
    forwards over its dual cache under the proposal's layout."""
    prompt = _prompt(model, "Q: 7+2=?\nA: ")
    p, gen, block_len = prompt.shape[1], 64, 32
    mask_id = model.config.mask_token_id
    stepper = SpiffyStepper(
        p, mask_id=mask_id, gen_length=gen, block_length=block_len, graph=8, cache="dual"
    )
    x = torch.cat([prompt, torch.full((1, gen), mask_id)], dim=1)
    nfe, cache, drafts_seen = 0, None, 0
    with torch.no_grad():
        for start in stepper.block_starts:
            block = stepper.begin_block(x, start)
            while not block.done:
                proposal = stepper.propose(block)
                if proposal.prefill:
                    assert len(proposal) == 0
                    logits, cache = model.prefill(
                        x, block_start=block.start, block_end=block.end, mode="dual"
                    )
                    root, drafts = logits[0, block.start : block.end], None
                else:
                    inputs = proposal.inputs(x)
                    assert isinstance(inputs.layout, SegmentLayout)
                    drafts_seen += len(proposal)
                    out = model(
                        inputs.input_ids,
                        position_ids=inputs.position_ids,
                        layout=inputs.layout,
                        cache=cache,
                    )
                    root, drafts, _ = inputs.split(out)
                nfe += 1
                result = stepper.advance(block, root, drafts)
                assert result.steps == len(result.path) >= 1
                assert torch.equal(result.tokens, result.state[result.positions - block.start])
                x[0, block.start : block.end] = result.state
    want = generate(
        model,
        prompt,
        gen_length=gen,
        block_length=block_len,
        cache="dual",
        graph=8,
        max_drafts=None,
    )
    assert torch.equal(x, want.tokens) and nfe == want.nfe
    assert drafts_seen > 0 and stepper.stats.drafts_verified == drafts_seen
    assert stepper.step == want.steps


def test_additive_mask_is_the_layout():
    stepper = SpiffyStepper(4, mask_id=9, gen_length=8, block_length=4, graph=4, verify="packed")
    x = torch.tensor([[1, 2, 3, 4] + [9] * 8])
    block = stepper.begin_block(x, 4)
    proposal = stepper.propose(block)
    assert len(proposal) == 0  # first forward of a block, no hint: nothing to draft from
    mask = proposal.additive_mask(x, torch.float32)
    dense = proposal.inputs(x).layout.to_dense()
    assert mask.shape == (1, 1, *dense.shape)
    assert torch.equal(mask[0, 0] == 0, dense)
    assert bool((mask[0, 0][~dense] == torch.finfo(torch.float32).min).all())


def test_step_api_errors_name_the_argument():
    with pytest.raises(ValueError, match="max_drafts must be None or an int"):
        SpiffyStepper(4, mask_id=9, gen_length=8, block_length=4, max_drafts="auto")
    with pytest.raises(ValueError, match="gen_length \\(10\\) must be a multiple"):
        SpiffyStepper(4, mask_id=9, gen_length=10, block_length=4)
    with pytest.raises(ValueError, match="cache must be one of"):
        SpiffyStepper(4, mask_id=9, gen_length=8, block_length=4, cache="full")
    stepper = SpiffyStepper(4, mask_id=9, gen_length=8, block_length=4, graph=4)
    x = torch.tensor([[1, 2, 3, 4] + [9] * 8])
    with pytest.raises(ValueError, match="start must be one of the block starts"):
        stepper.begin_block(x, 5)
    with pytest.raises(ValueError, match="x has 11 positions"):
        stepper.begin_block(x[:, :11], 4)
    block = stepper.begin_block(x, 4)
    with pytest.raises(ValueError, match="advance needs the drafts of a propose call"):
        stepper.advance(block, torch.zeros(4, 16))
    stepper.propose(block)
    with pytest.raises(ValueError, match="root_logits must be \\[L, V\\] = \\[4, V\\]"):
        stepper.advance(block, torch.zeros(3, 16))
