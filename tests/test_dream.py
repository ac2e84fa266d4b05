"""Dream-compatible model: architecture against transformers' Qwen2, shifted logits, Dream's
confidence rules, Spiffy == vanilla in float64 for every exact verification mode, checkpoint
round trips, and the real Dream-7B config's parameter names and shapes on the meta device."""

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
from walk_oracle import decoy_first, lossless_matrix

from spiffy_triton.decoding import generate
from spiffy_triton.decoding.rules import TransitionRule, num_transfer_tokens
from spiffy_triton.models import (
    DreamModel,
    QwenConfig,
    dream_7b_config,
    load_dream,
    load_model,
    model_architecture,
    save_checkpoint,
)
from spiffy_triton.models.dream import BidirectionalVerifier

MASK = TINY_QWEN_MASK_ID
PROMPT = torch.tensor([[5, 17, 3, 40, 22, 9, 31]])
GEN, BLOCK = 8, 4


@functools.cache
def tiny(layers: int = 2) -> DreamModel:
    config = tiny_qwen_config(model_type="Dream", num_hidden_layers=layers)
    return DreamModel(config, backend="torch").init_weights(1, std=0.5).double().eval()


# ---------------------------------------------------------------------------- architecture


def test_real_dream_7b_names_and_shapes_on_meta():
    config = dream_7b_config()
    with torch.device("meta"):
        model = DreamModel(config, backend="torch")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == config.parameter_shapes()
    assert len(shapes) == 2 + 1 + 28 * 12  # embed, norm, lm_head; 12 tensors per layer
    expected = {
        "model.embed_tokens.weight": (152064, 3584),
        "model.layers.0.self_attn.q_proj.weight": (3584, 3584),
        "model.layers.0.self_attn.q_proj.bias": (3584,),
        "model.layers.27.self_attn.k_proj.weight": (512, 3584),  # 4 KV heads of 128
        "model.layers.27.self_attn.k_proj.bias": (512,),
        "model.layers.27.self_attn.v_proj.weight": (512, 3584),
        "model.layers.27.self_attn.v_proj.bias": (512,),
        "model.layers.27.self_attn.o_proj.weight": (3584, 3584),
        "model.layers.27.mlp.gate_proj.weight": (18944, 3584),
        "model.layers.27.mlp.up_proj.weight": (18944, 3584),
        "model.layers.27.mlp.down_proj.weight": (3584, 18944),
        "model.layers.27.input_layernorm.weight": (3584,),
        "model.layers.27.post_attention_layernorm.weight": (3584,),
        "model.norm.weight": (3584,),
        "lm_head.weight": (152064, 3584),
    }
    for name, shape in expected.items():
        assert shapes[name] == shape, name
    assert not any(k.endswith(("o_proj.bias", "q_norm.weight")) for k in shapes)
    # Qwen2.5-7B has 7.62B parameters.
    assert 7.60e9 < sum(v.numel() for v in model.state_dict().values()) < 7.63e9
    assert config.rope_theta == 1e6 and config.mask_token_id == 151666
    assert config.head_dim == 128 and config.attention_bias and not config.qk_norm


def dream_json() -> dict:
    """Dream-v0-Instruct-7B's config.json keys (values of the tiny model)."""
    return {
        "architectures": ["DreamModel"],
        "attention_dropout": 0.0,
        "auto_map": {"AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 48,
        "mask_token_id": MASK,
        "max_position_embeddings": 512,
        "max_window_layers": 2,
        "model_type": "Dream",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "pad_token_id": 2,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 50000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 64,
    }


def test_config_reads_dream_keys_and_round_trips():
    config = QwenConfig.from_dict(dream_json())
    assert (config.hidden_size, config.num_key_value_heads, config.head_dim) == (32, 2, 8)
    assert config.rope_theta == 50000.0 and config.mask_token_id == MASK
    assert config.max_sequence_length == 512 and config.embedding_size == 64
    assert config.extra["auto_map"] == {"AutoModel": "modeling_dream.DreamModel"}
    again = QwenConfig.from_dict(config.to_dict())
    assert again == config
    # transformers 5 writes rope_theta inside rope_parameters.
    data = dream_json()
    del data["rope_theta"]
    data["rope_parameters"] = {"rope_type": "default", "rope_theta": 1234.0}
    assert QwenConfig.from_dict(data).rope_theta == 1234.0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_scaling"),
        ({"use_sliding_window": True}, "use_sliding_window"),
        ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
        ({"attention_bias": False}, "always carry a bias"),
        ({"mask_token_id": 64}, "mask_token_id"),
        ({"hidden_size": 0}, "hidden_size must be a positive integer"),
        ({"rope_parameters": {"rope_type": "yarn"}}, "rope_type"),
    ],
)
def test_config_errors(change, message):
    data = dream_json()
    data.update(change)
    with pytest.raises(ValueError, match=message):
        QwenConfig.from_dict(data, source="dream/config.json")


def test_config_missing_keys():
    data = dream_json()
    del data["num_hidden_layers"]
    with pytest.raises(ValueError, match="missing required config keys.*num_hidden_layers"):
        QwenConfig.from_dict(data)


def hf_qwen2(model: DreamModel):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hf_config = Qwen2Config(
        **transformers_qwen_kwargs(model.config),
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    hf = Qwen2ForCausalLM(hf_config).double().eval()
    hf.load_state_dict(model.state_dict(), strict=True)
    return hf


def test_matches_transformers_qwen2_with_bidirectional_mask():
    """Same weights, same names: transformers' Qwen2 with an all-visible 4-D mask. (transformers
    computes RoPE angles in float32, so float64 agrees to ~1e-6, not to the last bit.)"""
    model = tiny()
    hf = hf_qwen2(model)
    ids = torch.randint(0, MASK, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(ids)
        theirs = hf(ids, attention_mask=torch.zeros(2, 1, 11, 11, dtype=torch.float64)).logits
    assert_close(ours, theirs, atol=2e-5, rtol=1e-5, name="Dream vs transformers Qwen2")
    assert (ours - hf(ids).logits).abs().max() > 1e-3  # and it is not the causal model


# ---------------------------------------------------------------------------- shifted logits


def test_token_logits_reads_position_i_from_row_i_minus_1():
    logits = torch.arange(2 * 5 * 3, dtype=torch.float64).view(2, 5, 3)
    shifted = DreamModel.token_logits(logits)
    assert torch.equal(shifted[:, 1:], logits[:, :-1])
    assert torch.equal(shifted[:, 0], logits[:, 0])


@pytest.mark.parametrize(
    "cache, verify",
    [
        (None, "batch"),
        (None, "packed"),
        ("dual", "packed"),
        ("prefix", "packed"),
        ("prefix", "batch"),
    ],
)
def test_verifier_reads_every_state_from_its_own_shifted_rows(cache, verify):
    """Root and draft logits of a verification forward are the model's shifted logits of that
    state (one layer: exact for every mode, the uncached packed one included)."""
    model = tiny(1)
    gen = torch.Generator().manual_seed(2)
    x = torch.cat([PROMPT, torch.full((1, 8), MASK)], dim=1)
    s, e = 7, 11
    x[0, 8] = 12
    drafts = x[0, s:e].repeat(3, 1)
    drafts[:, 1] = torch.randint(0, MASK, (3,), generator=gen)
    drafts[2, 3] = 44
    verifier = BidirectionalVerifier(model, cache, verify, shift=1)
    if cache is not None:
        first, _ = verifier.prefill(x, s, e)
        assert_close(first, DreamModel.token_logits(model(x))[0, s:e], atol=1e-12, rtol=1e-12)
    root, draft_logits, _ = verifier(x, s, e, drafts)

    def full_forward(state):  # vanilla: the whole sequence, or the frozen cache's context
        y = x.clone()
        y[0, s:e] = state
        if cache is None:
            return DreamModel.token_logits(model(y))[0, s:e]
        w = s - 1
        pos = torch.arange(w, e if cache == "dual" else y.shape[1])
        out = model(y[:, w : w + len(pos)], position_ids=pos, cache=verifier.kv)
        return out[0, : e - s]

    assert_close(root, full_forward(x[0, s:e]), atol=1e-12, rtol=1e-12, name="root")
    for k in range(3):
        assert_close(draft_logits[k], full_forward(drafts[k]), atol=1e-12, rtol=1e-12)


# ---------------------------------------------------------------------------- Dream's rules


def test_dream_confidence_kinds():
    mask = 9
    probs = torch.full((3, 10), 1e-12, dtype=torch.float64)
    probs[0, :3] = torch.tensor([0.6, 0.35, 0.05])  # most probable top-1, small margin
    probs[1, 0], probs[1, 1:9] = 0.55, 0.45 / 8  # biggest margin, high entropy
    probs[2, :2] = torch.tensor([0.58, 0.42])  # lowest entropy
    logits = probs.log()
    state = torch.full((3,), mask)
    positions = torch.arange(3)
    schedule = (1, 1, 1)

    def first_commit(remasking, temperature=0.0):
        rule = TransitionRule(
            mask_id=mask,
            remasking=remasking,
            temperature=temperature,
            schedule=schedule,
            backend="torch",
        )
        new, marg = rule(logits, state, step=0, block_step=0, positions=positions)
        return int((new != mask).nonzero()[0]), marg

    top2 = probs.topk(2).values
    entropy = -(probs * probs.log()).sum(-1)
    assert int(probs.max(-1).values.argmax()) == 0
    assert int((top2[:, 0] - top2[:, 1]).argmax()) == 1 and int(entropy.argmin()) == 2
    assert first_commit("maskgit_plus")[0] == 0
    assert first_commit("low_confidence")[0] == 0
    assert first_commit("topk_margin")[0] == 1
    assert first_commit("entropy")[0] == 2
    # At T > 0 the confidence is the probability under softmax(logits / T), as in Dream.
    _, marg = first_commit("maskgit_plus", temperature=0.5)
    tempered = (logits / 0.5).softmax(-1)
    assert_close(
        marg.prob.double(), tempered.gather(1, marg.token[:, None])[:, 0], atol=1e-6, rtol=1e-6
    )


# ---------------------------------------------------------------------------- decoding


def dream_reference_decode(model, prompt, *, remasking, temperature=0.0, seed=0):
    """Dream's decoding written out: full bidirectional forward, shifted logits, one rule step
    per forward (LLaDA's block schedule, one token per step)."""
    x = torch.cat([prompt, torch.full((1, GEN), MASK)], dim=1)
    rule = TransitionRule(
        mask_id=MASK,
        remasking=remasking,
        temperature=temperature,
        schedule=tuple(num_transfer_tokens(BLOCK, BLOCK)),
        seed=seed,
        backend="torch",
    )
    step = 0
    for s in range(prompt.shape[1], x.shape[1], BLOCK):
        e = s + BLOCK
        for block_step in range(BLOCK):
            logits = DreamModel.token_logits(model(x))[0, s:e]
            x[0, s:e], _ = rule(
                logits, x[0, s:e], step=step, block_step=block_step, positions=torch.arange(s, e)
            )
            step += 1
    return x


@pytest.mark.parametrize("remasking, temperature", [("maskgit_plus", 0.0), ("entropy", 0.8)])
def test_vanilla_generate_is_dream_decoding(remasking, temperature):
    model = tiny()
    expected = dream_reference_decode(
        model, PROMPT, remasking=remasking, temperature=temperature, seed=4
    )
    out = generate(
        model,
        PROMPT,
        gen_length=GEN,
        block_length=BLOCK,
        remasking=remasking,
        temperature=temperature,
        seed=4,
        backend="torch",
    )
    assert torch.equal(out.tokens, expected)
    assert out.nfe == GEN


EXACT_CASES = [
    # (cache, verify, rule)
    (None, "batch", {"remasking": "maskgit_plus"}),
    ("dual", "packed", {"remasking": "maskgit_plus", "temperature": 0.7, "seed": 6}),
    ("prefix", "packed", {"remasking": "topk_margin"}),
    ("prefix", "packed", {"remasking": "entropy", "temperature": 0.7, "seed": 7}),
    ("dual", "batch", {"remasking": "maskgit_plus"}),
]


@pytest.mark.parametrize("cache, verify, rule", EXACT_CASES)
def test_spiffy_equals_vanilla(cache, verify, rule):
    model = tiny()
    kwargs = dict(
        gen_length=GEN, block_length=BLOCK, cache=cache, verify=verify, backend="torch", **rule
    )
    vanilla = generate(model, PROMPT, **kwargs)
    spiffy = generate(model, PROMPT, graph=4, max_drafts=None, **kwargs)
    assert spiffy.stats.exact and spiffy.stats.verify == verify
    assert torch.equal(spiffy.tokens, vanilla.tokens)
    assert spiffy.steps == vanilla.steps
    assert spiffy.nfe < vanilla.nfe  # drafts were accepted: the equality is not vacuous


def test_uncached_packed_is_near_lossless_and_flagged():
    """Uncached packed verification: exact on one layer (the context's keys do not depend on
    the block yet), flagged inexact because deeper context rows see the root."""
    one = tiny(1)
    kwargs = dict(gen_length=GEN, block_length=BLOCK, backend="torch")
    packed = generate(one, PROMPT, graph=4, max_drafts=None, verify="packed", **kwargs)
    assert not packed.stats.exact
    assert torch.equal(packed.tokens, generate(one, PROMPT, **kwargs).tokens)
    assert (
        generate(tiny(), PROMPT, graph=4, max_drafts=None, verify="packed", **kwargs).stats.exact
        is False
    )


def test_spiffy_verifier_errors():
    model = tiny()
    with pytest.raises(ValueError, match="cache must be"):
        model.spiffy_verifier("full", None)
    with pytest.raises(ValueError, match="verify must be"):
        model.spiffy_verifier(None, "tree")
    with pytest.raises(ValueError, match="threshold"):
        generate(
            model,
            PROMPT,
            gen_length=GEN,
            block_length=BLOCK,
            remasking="topk_margin",
            threshold=0.9,
            backend="torch",
        )


# ---------------------------------------------------------------------------- checkpoints


def test_save_load_round_trip(tmp_path):
    model = tiny()
    save_checkpoint(model, tmp_path / "single")
    save_checkpoint(model, tmp_path / "sharded", max_shard_bytes=20_000)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    data = json.loads((tmp_path / "single" / "config.json").read_text())
    assert data["model_type"] == "Dream" and data["architectures"] == ["DreamModel"]
    ids = torch.randint(0, MASK, (1, 9), generator=torch.Generator().manual_seed(3))
    for folder in ("single", "sharded"):
        assert model_architecture(tmp_path / folder) == "dream"
        loaded = load_model(tmp_path / folder, dtype=torch.float64, backend="torch")
        assert type(loaded) is DreamModel
        assert loaded.config.to_dict() == model.config.to_dict()
        with torch.no_grad():
            assert torch.equal(loaded(ids), model(ids))


def test_loads_a_transformers_qwen2_checkpoint_with_dream_keys(tmp_path):
    """A directory written by transformers (Qwen2 names, its config.json) with Dream's keys."""
    model = tiny()
    hf = hf_qwen2(model)
    hf.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data.update(model_type="Dream", architectures=["DreamModel"], mask_token_id=MASK)
    (tmp_path / "config.json").write_text(json.dumps(data))
    loaded = load_dream(tmp_path, dtype=torch.float64, backend="torch")
    ids = torch.randint(0, MASK, (1, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_load_errors(tmp_path):
    save_checkpoint(tiny(), tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    del data["mask_token_id"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="mask_token_id is missing"):
        load_model(tmp_path)
    data.update(model_type="mamba", architectures=["MambaForCausalLM"])
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="model_type 'mamba' is not one of"):
        load_model(tmp_path)


# ------------------------------------------------ lossless matrix (issue #25: LLaDA's level)

MATRIX_PROMPTS = (
    PROMPT,
    torch.tensor([[11, 2, 60, 33, 7]]),
    torch.tensor([[40, 41, 1, 0, 12, 19, 25, 62, 3, 8, 14]]),
)
MATRIX_RULES = {
    "maskgit": {"remasking": "maskgit_plus"},
    "maskgit-T0.7": {"remasking": "maskgit_plus", "temperature": 0.7, "seed": 51},
    "margin": {"remasking": "topk_margin"},
    "entropy-T0.7": {"remasking": "entropy", "temperature": 0.7, "seed": 52},
    "2tok": {"remasking": "maskgit_plus", "steps": 8},
    "thr0.5-T0.7": {"threshold": 0.5, "temperature": 0.7, "seed": 53},
    "random-T0.7": {"remasking": "random", "temperature": 0.7, "seed": 54},
}
MATRIX_MODES = ((None, "batch"), ("prefix", "packed"), ("prefix", "batch"), ("dual", "packed"))
MATRIX_MODES += (("dual", "batch"),)
MATRIX_GRAPHS = (4, 8, 16)


MATRIX = lossless_matrix(len(MATRIX_PROMPTS), MATRIX_RULES, MATRIX_MODES, MATRIX_GRAPHS)


def test_matrix_covers_every_rule_in_every_mode():
    assert {(c[1], c[2], c[3]) for c in MATRIX} == {
        (rule, *mode) for rule in MATRIX_RULES for mode in MATRIX_MODES
    }


@pytest.mark.parametrize(
    "case", MATRIX, ids=[f"p{p}-{r}-{c or 'nocache'}-{v}-D{g}" for p, r, c, v, g in MATRIX]
)
def test_spiffy_equals_vanilla_matrix(case):
    """Three prompts x Dream's rules (its three confidence kinds, greedy and sampled, two
    tokens per step, Fast-dLLM threshold, random remasking) x every exact mode; a decoy in
    row 0 (`walk_oracle.decoy_first`) so that the walk must read the row it matched."""
    p, rule, cache, verify, graph = case
    model = tiny()
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
