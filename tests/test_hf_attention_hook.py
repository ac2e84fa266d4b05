"""The graph-masked attention registered with transformers' ``AttentionInterface``
(`register_hf_attention`, ``attn_implementation="spiffy_graph"``): tiny Llama / Qwen3 models
built locally from configs verify through the `SegmentLayout` (no dense mask is built) and
give the dense-mask path's logits and tokens."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM
from utils import TINY_QWEN_MASK_ID, TINY_QWEN_SIZES, assert_close
from utils import random_token_ids as ids

from spiffy_triton.decoding import generate
from spiffy_triton.layout import SegmentLayout
from spiffy_triton.models.hf_adapter import (
    SPIFFY_ATTENTION,
    HFDiffusionModel,
    register_hf_attention,
)

MASK = TINY_QWEN_MASK_ID
PROMPT = torch.tensor([[5, 17, 3, 40, 22, 9, 31, 8]])
ARCHS = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}


def pair(arch, *, seed=1, dtype=torch.float64):
    """The same weights twice: the dense-mask (sdpa) model and the layout-hook model."""
    config_class, model_class = ARCHS[arch]
    torch.manual_seed(seed)
    config = config_class(
        **TINY_QWEN_SIZES, max_position_embeddings=128, attn_implementation="sdpa"
    )
    config.initializer_range = 0.3
    dense = model_class(config).to(dtype).eval()
    hooked = copy.deepcopy(dense)
    hooked.set_attn_implementation(register_hf_attention())
    assert hooked.config._attn_implementation == SPIFFY_ATTENTION
    assert dense.config._attn_implementation == "sdpa"
    return dense, hooked


LAYOUTS = {
    "spiffy_packed": lambda: SegmentLayout.spiffy(6, 4, 2, 3),
    "block_causal": lambda: SegmentLayout.block_causal([4, 4, 4, 2]),
    "simsd": lambda: SegmentLayout.simsd([4, 4], 1, 4),
}


@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_hook_logits_equal_the_dense_mask_path(arch, layout_name):
    dense, hooked = pair(arch)
    layout = LAYOUTS[layout_name]()
    x = ids(layout.num_q_rows, seed=2)
    pos = torch.arange(layout.num_q_rows) % 9  # drafts reuse positions: any ids will do
    kwargs = dict(mask_token_id=MASK, backend="torch")
    via_mask = HFDiffusionModel(dense, **kwargs)
    via_layout = HFDiffusionModel(hooked, **kwargs)
    assert not via_mask.uses_layout and via_layout.uses_layout
    via_layout.additive_mask = None  # the hook path must never build the dense mask
    with torch.no_grad():
        want = via_mask(x, position_ids=pos, layout=layout)
        got = via_layout(x, position_ids=pos, layout=layout)
    assert_close(got, want, name=f"{arch} {layout_name}: hook vs dense mask")


def test_hook_sees_no_mask_from_transformers(monkeypatch):
    """transformers has no mask function for the hook's name: the attention layers get
    ``attention_mask=None`` (the hook raises on a mask) and the layout."""
    from spiffy_triton.models import hf_adapter

    seen = []
    original = hf_adapter.graph_attention

    def spy(q, k, v, layout, **kwargs):
        seen.append((tuple(q.shape), tuple(k.shape), layout))
        return original(q, k, v, layout, **kwargs)

    monkeypatch.setattr(hf_adapter, "graph_attention", spy)
    _, hooked = pair("qwen3")
    layout = LAYOUTS["spiffy_packed"]()
    with torch.no_grad():
        HFDiffusionModel(hooked, mask_token_id=MASK)(ids(layout.num_q_rows), layout=layout)
    rows, dim = layout.num_q_rows, hooked.config.head_dim
    # one call per layer, grouped key/value heads unrepeated
    assert seen == [((1, 4, rows, dim), (1, 2, rows, dim), layout)] * 2


@pytest.mark.parametrize("arch,options", [("llama", {}), ("qwen3", {"attention": "block_causal"})])
@pytest.mark.parametrize("rule", [{}, {"temperature": 0.7, "seed": 3}], ids=["greedy", "T0.7"])
def test_generate_through_the_hook_equals_the_dense_path(arch, options, rule):
    dense, hooked = pair(arch)
    kwargs = dict(gen_length=8, block_length=4, backend="torch", **rule)
    spiffy = dict(graph=4, max_drafts=None, verify="packed")
    via_mask = HFDiffusionModel(dense, mask_token_id=MASK, **options)
    via_layout = HFDiffusionModel(hooked, mask_token_id=MASK, backend="torch", **options)
    vanilla = generate(via_mask, PROMPT, **kwargs)
    for model in (via_mask, via_layout):
        out = generate(model, PROMPT, **kwargs, **spiffy)
        assert out.nfe < vanilla.nfe  # drafts were verified and accepted
        if "attention" in options:  # block-causal packed verify is exact
            assert torch.equal(out.tokens, vanilla.tokens)
    hooked_out = generate(via_layout, PROMPT, **kwargs, **spiffy)
    assert torch.equal(hooked_out.tokens, generate(via_mask, PROMPT, **kwargs, **spiffy).tokens)


def test_hook_errors_name_what_is_missing():
    _, hooked = pair("llama")
    with pytest.raises(ValueError, match="spiffy_layout=<SegmentLayout>"):
        hooked(ids(6))  # a plain transformers call has no layout
    with pytest.raises(ValueError, match="backend must be one of"):
        HFDiffusionModel(hooked, mask_token_id=MASK, backend="cuda")
    unregistered = copy.deepcopy(hooked)
    unregistered.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="register_hf_attention"):
        HFDiffusionModel(unregistered, mask_token_id=MASK)


def test_mask_memory_benchmark_counts_what_it_builds():
    """benchmarks/hf_mask_memory.py: the dense additive mask is Mq x Mk bf16 (2 bytes each),
    the layout O(segments); shapes agree with the cost model's verify_shape."""
    from benchmarks.hf_mask_memory import measure

    row = measure("dual", 256, 8)
    assert (row["mq"], row["mk"]) == (9 * 32, 256 + 256 + 8 * 32)
    assert row["dense_additive"] == 2 * row["dense_bool"] == 2 * row["mq"] * row["mk"]
    # 9 query segments (root, 8 drafts), 11 key ones: int64 lengths and order, int8 matrix
    assert row["layout"] == 8 * (9 + 11 + 11) + 9 * 11
    assert row["saved"] == row["dense_additive"] - row["layout"] - row["schedule"] > 0
