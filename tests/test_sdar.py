"""SDAR-style block-causal model: architecture against transformers' Qwen3 under a block-causal
mask, the per-block KV commit, SDAR's rules, Spiffy == vanilla in float64 with packed
verification (exact here, unlike for bidirectional models), checkpoint round trips, and the
real SDAR-1.7B config's parameter names and shapes on the meta device."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from utils import (
    TINY_QWEN_MASK_ID,
    assert_close,
    tiny_qwen_config,
    transformers_qwen_kwargs,
)
from utils import random_token_ids as ids
from walk_oracle import decoy_first, lossless_matrix

from spiffy_triton.decoding import generate
from spiffy_triton.decoding.rules import TransitionRule, num_transfer_tokens
from spiffy_triton.layout import SegmentLayout
from spiffy_triton.models import (
    DreamModel,
    QwenConfig,
    SDARModel,
    load_model,
    load_sdar,
    model_architecture,
    save_checkpoint,
    sdar_1_7b_config,
)
from spiffy_triton.models.dream import BidirectionalVerifier
from spiffy_triton.models.sdar import BlockCausalVerifier

MASK = TINY_QWEN_MASK_ID
PROMPT = torch.tensor([[5, 17, 3, 40, 22, 9, 31, 8]])  # 8 tokens: two blocks of 4
BLOCK = 4


def tiny_config(**overrides) -> QwenConfig:
    sdar = dict(head_dim=16, block_size=BLOCK, tie_word_embeddings=True, model_type="sdar")
    return tiny_qwen_config(**{**sdar, **overrides})


@functools.cache
def tiny() -> SDARModel:
    return SDARModel(tiny_config(), backend="torch").init_weights(1, std=0.5).double().eval()


# ---------------------------------------------------------------------------- architecture


def test_real_sdar_1_7b_names_and_shapes_on_meta():
    config = sdar_1_7b_config()
    with torch.device("meta"):
        model = SDARModel(config, backend="torch")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == config.parameter_shapes()
    assert len(shapes) == 2 + 28 * 11  # embed, norm (tied head); 11 tensors per layer
    expected = {
        "model.embed_tokens.weight": (151936, 2048),
        "model.layers.0.self_attn.q_proj.weight": (2048, 2048),  # 16 heads of 128
        "model.layers.0.self_attn.k_proj.weight": (1024, 2048),  # 8 KV heads of 128
        "model.layers.0.self_attn.v_proj.weight": (1024, 2048),
        "model.layers.0.self_attn.o_proj.weight": (2048, 2048),
        "model.layers.27.self_attn.q_norm.weight": (128,),
        "model.layers.27.self_attn.k_norm.weight": (128,),
        "model.layers.27.mlp.gate_proj.weight": (6144, 2048),
        "model.layers.27.mlp.down_proj.weight": (2048, 6144),
        "model.norm.weight": (2048,),
    }
    for name, shape in expected.items():
        assert shapes[name] == shape, name
    assert not any(k.endswith(".bias") for k in shapes) and "lm_head.weight" not in shapes
    # Qwen3-1.7B: 1.7B parameters, 1.4B of them outside the embedding.
    total = sum(v.numel() for v in model.state_dict().values())
    assert 1.70e9 < total < 1.75e9
    assert 1.38e9 < total - 151936 * 2048 < 1.42e9
    assert config.qk_norm and not config.attention_bias and config.rope_theta == 1e6
    untied = QwenConfig.from_dict({**config.to_dict(), "tie_word_embeddings": False})
    assert untied.parameter_shapes()["lm_head.weight"] == (151936, 2048)


def hf_qwen3(model: SDARModel):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    hf = Qwen3ForCausalLM(
        Qwen3Config(
            **transformers_qwen_kwargs(model.config),
            head_dim=model.config.head_dim,
            tie_word_embeddings=True,
            attn_implementation="sdpa",
        )
    )
    hf = hf.double().eval()
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    assert missing == ["lm_head.weight"] and not unexpected  # tied to the embedding
    return hf


def test_matches_transformers_qwen3_with_block_causal_mask():
    """Same weights and names as transformers' Qwen3 given SDAR's block-causal 4-D mask
    (transformers computes RoPE angles in float32: agreement to ~1e-6)."""
    model = tiny()
    x = ids(13)
    layout = SegmentLayout.block_causal([4, 4, 4, 1])
    mask = torch.zeros(13, 13, dtype=torch.float64)
    mask.masked_fill_(~layout.to_dense(), torch.finfo(torch.float64).min)
    with torch.no_grad():
        ours = model(x)  # default layout: blocks of config.block_size from position 0
        theirs = hf_qwen3(model)(x, attention_mask=mask[None, None]).logits
        assert_close(model(x, layout=layout), ours, atol=0, rtol=0)
    assert_close(ours, theirs, atol=2e-5, rtol=1e-5, name="SDAR vs transformers Qwen3")


def test_block_causal_attention():
    """Within a block every position sees every other; across blocks only the past."""
    model = tiny()
    x = ids(12)
    y = x.clone()
    y[0, 6] = (y[0, 6] + 1) % MASK  # a token of the second block
    with torch.no_grad():
        a, b = model(x), model(y)
    changed = (a - b).abs().amax(-1)[0] > 1e-9
    assert not changed[:4].any()  # the first block does not see the second
    assert changed[4:].all()  # its own block (both directions) and the later one do


def test_prefill_commits_keys_block_by_block():
    """Committing block by block (SDAR's KV cache) gives the same logits as one full
    block-causal forward, and the cached forward of a state matches it too."""
    model = tiny()
    x = ids(16, seed=1)
    full = model(x, layout=SegmentLayout.block_causal([4, 4, 4, 4]))
    with torch.no_grad():
        first, cache = model.prefill(x, block_start=8, block_end=12, chunk_lengths=(4, 4))
        second, cache = model.prefill(x, block_start=12, block_end=16, cache=cache)
        cached = model(x[:, 12:16], position_ids=torch.arange(12, 16), cache=cache)
    assert cache.block_start == 12 and cache.layers[0].prefix_k.shape[2] == 12
    assert_close(first[0], full[0, 8:12], name="prefill of block 3")
    assert_close(second[0], full[0, 12:16], name="incremental prefill of block 4")
    assert_close(cached[0], full[0, 12:16], name="cached forward")


def test_packed_drafts_equal_each_draft_alone_without_cache():
    """The reason packed verification is exact for a block-causal model: no context row sees
    the block, so a draft packed beside the root gets the logits of its own full forward."""
    model = tiny()
    x = ids(12, seed=2)
    s, e = 8, 12
    drafts = torch.stack([x[0, s:e], torch.tensor([1, 2, 3, 4]), torch.tensor([MASK, 7, MASK, 9])])
    verifier = BlockCausalVerifier(model, None, "packed")
    root, draft_logits, _ = verifier(x, s, e, drafts)
    layout = SegmentLayout.block_causal([4, 4, 4])
    for k in range(3):
        y = x.clone()
        y[0, s:e] = drafts[k]
        assert_close(draft_logits[k], model(y, layout=layout)[0, s:e], name=f"draft {k}")
    assert_close(root, model(x, layout=layout)[0, s:e], name="root")


# ---------------------------------------------------------------------------- SDAR's rules


def test_dynamic_low_confidence_rule():
    mask = 9
    probs = torch.full((4, 10), 1e-12, dtype=torch.float64)
    for row, p in enumerate((0.95, 0.9, 0.6, 0.3)):
        probs[row, :9] = (1 - p) / 8  # the rest spread over the other tokens (9 is the mask)
        probs[row, row] = p
    logits = probs.log()
    positions = torch.arange(4)

    def committed(state, threshold, block_step=0, schedule=(2, 2)):
        rule = TransitionRule(
            mask_id=mask,
            remasking="low_confidence_dynamic",
            threshold=threshold,
            schedule=schedule,
            backend="torch",
        )
        new, _ = rule(logits, state, step=0, block_step=block_step, positions=positions)
        return sorted((new != state).nonzero().flatten().tolist())

    masked = torch.full((4,), mask)
    assert committed(masked, 0.5) == [0, 1, 2]  # 3 above 0.5 >= 2 scheduled: all of them
    assert committed(masked, 0.92) == [0, 1]  # 1 above: the 2 scheduled most confident
    # An earlier step committed more than scheduled: the count is clamped to what is masked.
    one_left = torch.tensor([0, 1, 2, mask])
    assert committed(one_left, 0.99, block_step=1) == [3]
    static = TransitionRule(mask_id=mask, remasking="low_confidence_static", schedule=(2, 2))
    new, _ = static(logits, masked, step=0, block_step=0, positions=positions)
    assert sorted((new != mask).nonzero().flatten().tolist()) == [0, 1]
    with pytest.raises(ValueError, match="needs a threshold"):
        TransitionRule(mask_id=mask, remasking="low_confidence_dynamic", schedule=(2, 2))


# ---------------------------------------------------------------------------- decoding


def sdar_reference_decode(
    model, prompt, gen_length, *, remasking, threshold=None, seed=0, temperature=0.0
):
    """SDAR's decoding written out: the prompt's blocks, then one block at a time, each step a
    full block-causal forward over everything before the block and the block."""
    x = torch.cat([prompt, torch.full((1, gen_length), MASK)], dim=1)
    rule = TransitionRule(
        mask_id=MASK,
        remasking=remasking,
        threshold=threshold,
        temperature=temperature,
        schedule=tuple(num_transfer_tokens(BLOCK, BLOCK)),
        seed=seed,
        backend="torch",
    )
    step = 0
    for s in range(prompt.shape[1], x.shape[1], BLOCK):
        e = s + BLOCK
        layout = SegmentLayout.block_causal([BLOCK] * (e // BLOCK))
        block_step = 0
        while (x[0, s:e] == MASK).any():
            logits = model(x[:, :e], layout=layout)[0, s:e]
            x[0, s:e], _ = rule(
                logits, x[0, s:e], step=step, block_step=block_step, positions=torch.arange(s, e)
            )
            step += 1
            block_step += 1
    return x, step


@pytest.mark.parametrize("cache", [None, "prefix"])
def test_vanilla_generate_is_sdar_decoding(cache):
    model = tiny()
    rule = {"remasking": "low_confidence_dynamic", "threshold": 0.3, "temperature": 0.8}
    expected, steps = sdar_reference_decode(model, PROMPT, 8, seed=3, **rule)
    out = generate(
        model,
        PROMPT,
        gen_length=8,
        block_length=BLOCK,
        cache=cache,
        seed=3,
        backend="torch",
        **rule,
    )
    assert torch.equal(out.tokens, expected) and out.steps == steps


EXACT_CASES = [
    (None, "packed", {"remasking": "low_confidence_static"}),
    (None, "packed", {"remasking": "low_confidence_static", "temperature": 0.7, "seed": 5}),
    ("prefix", "packed", {"remasking": "low_confidence_static"}),
    ("prefix", "packed", {"remasking": "low_confidence", "temperature": 0.7, "seed": 6}),
    ("prefix", "batch", {"remasking": "low_confidence_static"}),
]


@pytest.mark.parametrize("cache, verify, rule", EXACT_CASES)
def test_spiffy_equals_vanilla(cache, verify, rule):
    model = tiny()
    kwargs = dict(
        gen_length=8, block_length=BLOCK, cache=cache, verify=verify, backend="torch", **rule
    )
    vanilla = generate(model, PROMPT, **kwargs)
    spiffy = generate(model, PROMPT, graph=4, max_drafts=None, **kwargs)
    assert spiffy.stats.exact and spiffy.stats.verify == verify
    assert torch.equal(spiffy.tokens, vanilla.tokens) and spiffy.steps == vanilla.steps
    assert spiffy.nfe < vanilla.nfe  # drafts were accepted: the equality is not vacuous


def test_packed_is_exact_for_block_causal_but_not_for_bidirectional():
    """The same weights run bidirectionally (as a Dream-style model, uncached, packed) drift
    from vanilla; block-causal packed verification does not."""
    sdar = tiny()
    kwargs = dict(gen_length=8, block_length=BLOCK, backend="torch", graph=4, max_drafts=None)
    out = generate(sdar, PROMPT, verify="packed", **kwargs)
    assert out.stats.exact and out.stats.verify == "packed"
    assert generate(sdar, PROMPT, verify=None, **kwargs).stats.verify == "packed"  # default
    bidirectional = DreamModel(tiny_config(model_type="qwen3"), backend="torch")
    bidirectional.load_state_dict(sdar.state_dict())
    bidirectional = bidirectional.double().eval()
    assert not generate(bidirectional, PROMPT, verify="packed", **kwargs).stats.exact
    # Numerically: packed beside the root, a bidirectional draft's logits are not its own.
    x = ids(12, seed=2)
    draft = torch.tensor([[1, 2, 3, 4]])
    _, packed, _ = BidirectionalVerifier(bidirectional, None, "packed")(x, 8, 12, draft)
    alone = x.clone()
    alone[0, 8:12] = draft
    assert (packed[0] - bidirectional(alone)[0, 8:12]).abs().max() > 1e-6


def test_errors():
    model = tiny()
    with pytest.raises(ValueError, match="no suffix"):
        generate(model, PROMPT, gen_length=8, block_length=BLOCK, cache="dual", backend="torch")
    with pytest.raises(ValueError, match="mode must be 'prefix'"):
        model.prefill(ids(8), block_start=4, block_end=8, mode="dual")
    with pytest.raises(ValueError, match="chunk_lengths"):
        model.prefill(ids(8), block_start=4, block_end=8, chunk_lengths=(3,))
    unsized = SDARModel(tiny_config(block_size=None), backend="torch")
    with pytest.raises(ValueError, match="block-causal: pass layout"):
        unsized(ids(8))


# ---------------------------------------------------------------------------- checkpoints


def test_save_load_round_trip(tmp_path):
    model = tiny()
    save_checkpoint(model, tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "sdar" and data["architectures"] == ["SDARForCausalLM"]
    assert model_architecture(tmp_path) == "sdar"
    loaded = load_model(tmp_path, dtype=torch.float64, backend="torch")
    assert type(loaded) is SDARModel and loaded.config.to_dict() == model.config.to_dict()
    with torch.no_grad():
        assert torch.equal(loaded(ids(9)), model(ids(9)))


def test_loads_a_transformers_qwen3_checkpoint_with_sdar_keys(tmp_path):
    model = tiny()
    hf_qwen3(model).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data.update(
        model_type="sdar", architectures=["SDARForCausalLM"], mask_token_id=MASK, block_size=BLOCK
    )
    (tmp_path / "config.json").write_text(json.dumps(data))
    loaded = load_sdar(tmp_path, dtype=torch.float64, backend="torch")
    with torch.no_grad():
        assert torch.equal(loaded(ids(9)), model(ids(9)))


# ------------------------------------------------ lossless matrix (issue #25: LLaDA's level)


@functools.cache
def tiny8() -> SDARModel:
    """Blocks of 8 (two per generation of 16), other weights than `tiny`."""
    config = tiny_config(block_size=8)
    return SDARModel(config, backend="torch").init_weights(2, std=0.5).double().eval()


MATRIX_PROMPTS = (
    torch.tensor([[5, 17, 3, 40, 22]]),  # ends inside a block
    PROMPT,  # a whole block
    torch.tensor([[40, 41, 1, 0, 12, 19, 25, 62, 3, 8, 14]]),
)
MATRIX_RULES = {
    "static": {"remasking": "low_confidence_static"},
    "static-T0.7": {"remasking": "low_confidence_static", "temperature": 0.7, "seed": 61},
    "dynamic-0.3": {"remasking": "low_confidence_dynamic", "threshold": 0.3},
    "dynamic-0.3-T0.7": {
        "remasking": "low_confidence_dynamic",
        "threshold": 0.3,
        "temperature": 0.7,
        "seed": 62,
    },
    "2tok": {"remasking": "low_confidence_static", "steps": 8},
    "lowconf-T0.7": {"remasking": "low_confidence", "temperature": 0.7, "seed": 63},
}
MATRIX_MODES = ((None, "packed"), (None, "batch"), ("prefix", "packed"), ("prefix", "batch"))
MATRIX_GRAPHS = (4, 8, 3)


MATRIX = lossless_matrix(len(MATRIX_PROMPTS), MATRIX_RULES, MATRIX_MODES, MATRIX_GRAPHS)


def test_matrix_covers_every_rule_in_every_mode():
    assert {(c[1], c[2], c[3]) for c in MATRIX} == {
        (rule, *mode) for rule in MATRIX_RULES for mode in MATRIX_MODES
    }


@pytest.mark.parametrize(
    "case", MATRIX, ids=[f"p{p}-{r}-{c or 'nocache'}-{v}-D{g}" for p, r, c, v, g in MATRIX]
)
def test_spiffy_equals_vanilla_matrix(case):
    """Three prompts x SDAR's rules (static and dynamic, greedy and sampled, two tokens per
    step, LLaDA's low confidence) x every exact mode (no dual cache on a block-causal model),
    two blocks of 8; a decoy in row 0 (`walk_oracle.decoy_first`)."""
    p, rule, cache, verify, graph = case
    model = tiny8()
    kwargs = dict(gen_length=16, block_length=8, cache=cache, verify=verify, backend="torch")
    kwargs.update(MATRIX_RULES[rule])
    vanilla = generate(model, MATRIX_PROMPTS[p], **kwargs)
    filler = decoy_first(model.config.vocab_size)
    spiffy = generate(
        model, MATRIX_PROMPTS[p], graph=graph, max_drafts=None, filler=filler, **kwargs
    )
    assert spiffy.stats.exact and spiffy.stats.verify == verify
    mismatch = (spiffy.tokens != vanilla.tokens).nonzero()[:, 1].tolist()
    assert not mismatch, f"tokens differ from vanilla at positions {mismatch}"
    assert spiffy.steps == vanilla.steps and spiffy.nfe <= vanilla.nfe
