"""Any `transformers` model as a Spiffy target: tiny random LLaMA / Qwen2 / Qwen3 configs built
locally (no downloads), the 4-D mask plumbing (additive, not boolean: eager attention adds the
mask it gets), and Spiffy == vanilla in float64 for bidirectional, shifted and block-causal
models."""

from __future__ import annotations

import functools

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from utils import TINY_QWEN_MASK_ID, TINY_QWEN_SIZES, assert_close
from utils import random_token_ids as ids

from spiffy_triton.decoding import generate
from spiffy_triton.layout import CAUSAL, SegmentLayout
from spiffy_triton.models import DreamModel, QwenConfig
from spiffy_triton.models.hf_adapter import HFDiffusionModel

MASK = TINY_QWEN_MASK_ID
PROMPT = torch.tensor([[5, 17, 3, 40, 22, 9, 31, 8]])
SIZES = dict(TINY_QWEN_SIZES, max_position_embeddings=128)


def build(config_class, model_class, *, implementation="sdpa", seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    config = config_class(**SIZES, attn_implementation=implementation)
    config.initializer_range = 0.3  # sharper than the default: drafts get accepted
    return model_class(config).to(dtype).eval()


@functools.cache
def llama(implementation="sdpa", dtype=torch.float64):
    return build(LlamaConfig, LlamaForCausalLM, implementation=implementation, dtype=dtype)


def adapter(hf, **kwargs):
    return HFDiffusionModel(hf, mask_token_id=MASK, **kwargs)


# ---------------------------------------------------------------------------- the mask


def test_causal_layout_reproduces_the_native_causal_forward():
    """A CAUSAL layout through the adapter's 4-D mask = the model's own causal forward."""
    hf = llama()
    x = ids(10)
    causal = SegmentLayout((10,), (10,), [[CAUSAL]])
    with torch.no_grad():
        assert_close(adapter(hf)(x, layout=causal), hf(x).logits, name="causal via 4-D mask")


def test_default_layout_is_bidirectional():
    model = adapter(llama())
    x = ids(10)
    y = x.clone()
    y[0, 9] = (y[0, 9] + 1) % MASK
    with torch.no_grad():
        changed = (model(x) - model(y)).abs().amax(-1)[0] > 1e-9
    assert changed.all()  # the last token changes every position's logits


def test_eager_and_sdpa_agree_and_a_boolean_mask_would_not():
    """Eager attention adds the 4-D mask to the scores: the adapter's additive mask gives what
    SDPA gives; a boolean mask given to eager would add 1/0 and hide nothing."""
    x = ids(12, seed=1)
    layout = SegmentLayout.block_causal([4, 4, 4])
    eager = llama("eager", torch.float32)
    sdpa = build(LlamaConfig, LlamaForCausalLM, dtype=torch.float32)
    sdpa.load_state_dict(eager.state_dict())
    with torch.no_grad():
        via_eager = adapter(eager, attention="block_causal")(x, layout=layout)
        via_sdpa = adapter(sdpa, attention="block_causal")(x, layout=layout)
        boolean = eager(x, attention_mask=layout.to_dense()[None, None]).logits
    assert_close(via_eager, via_sdpa, atol=1e-5, rtol=1e-5, name="eager vs sdpa")
    assert (boolean - via_eager).abs().max() > 1e-2


# ---------------------------------------------------------------------------- decoding


CASES = {
    "llama-bidirectional": (LlamaConfig, LlamaForCausalLM, dict()),
    "qwen2-shifted": (Qwen2Config, Qwen2ForCausalLM, dict(logits_shift=1)),
    "qwen3-block-causal": (Qwen3Config, Qwen3ForCausalLM, dict(attention="block_causal")),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("rule", [{}, {"temperature": 0.7, "seed": 3}], ids=["greedy", "T0.7"])
def test_spiffy_equals_vanilla(name, rule):
    config_class, model_class, options = CASES[name]
    model = adapter(build(config_class, model_class, seed=1), **options)
    kwargs = dict(gen_length=8, block_length=4, backend="torch", **rule)
    vanilla = generate(model, PROMPT, **kwargs)
    spiffy = generate(model, PROMPT, graph=4, max_drafts=None, **kwargs)
    assert spiffy.stats.exact
    assert spiffy.stats.verify == ("packed" if "block_causal" in options.values() else "batch")
    assert torch.equal(spiffy.tokens, vanilla.tokens) and spiffy.steps == vanilla.steps
    assert spiffy.nfe < vanilla.nfe  # drafts were accepted: the equality is not vacuous


def test_shifted_adapter_decodes_like_the_dream_model():
    """Dream through the adapter (transformers' Qwen2, bidirectional mask, logits_shift=1) and
    the package's DreamModel with the same weights agree on every logit up to transformers'
    float32 RoPE angles."""
    hf = build(Qwen2Config, Qwen2ForCausalLM, seed=2)
    dream = DreamModel(
        QwenConfig(**SIZES, rope_theta=hf.config.rope_parameters["rope_theta"], mask_token_id=MASK),
        backend="torch",
    )
    dream.load_state_dict(hf.state_dict())
    dream = dream.double().eval()
    x = ids(12, seed=4)
    with torch.no_grad():
        assert_close(adapter(hf, logits_shift=1)(x), dream(x), atol=2e-5, rtol=1e-5)


def test_errors():
    hf = llama()
    with pytest.raises(ValueError, match="mask_token_id"):
        HFDiffusionModel(hf, mask_token_id=64)
    with pytest.raises(ValueError, match="logits_shift"):
        adapter(hf, logits_shift=2)
    with pytest.raises(ValueError, match="attention must be"):
        adapter(hf, attention="causal")
    with pytest.raises(ValueError, match="bidirectional attention only"):
        adapter(hf, attention="block_causal", logits_shift=1)
    flash = build(LlamaConfig, LlamaForCausalLM)
    flash.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation"):
        adapter(flash)
    model = adapter(hf)
    with pytest.raises(ValueError, match="needs a model with a KV cache"):
        generate(model, PROMPT, gen_length=4, block_length=4, cache="dual", backend="torch")
    with pytest.raises(ValueError, match="layout has 5 query"):
        model(ids(4), layout=SegmentLayout.full(5))
    with pytest.raises(ValueError, match="needs layout= or a block_size"):
        adapter(hf, attention="block_causal")(ids(4))
