"""The LLaDA-compatible model: forward modes, KV caches, packed verification, GQA, RoPE,
tokenizer, generated data, the training objective, and the bundled trained model."""

from __future__ import annotations

import pytest
import torch
from utils import assert_close

from spiffy_triton.layout import SegmentLayout
from spiffy_triton.models import CharTokenizer, KVCache, LLaDAConfig, LLaDAModel, load_model
from spiffy_triton.training import tinydata
from spiffy_triton.training.train_tiny import add_mask_noise, make_batch

VOCAB = 48


def tiny_model(n_layers=2, n_heads=4, n_kv_heads=2, d_model=64, dtype=torch.float64, seed=0):
    config = LLaDAConfig(
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        n_layers=n_layers,
        mlp_hidden_size=96,
        vocab_size=VOCAB,
        rope_theta=500.0,
        mask_token_id=3,
        eos_token_id=0,
    )
    # A large init std gives peaked attention, so wrong masking shows up clearly.
    return LLaDAModel(config, backend="torch").init_weights(seed, std=0.3).to(dtype).eval()


def random_ids(length, seed, batch=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def with_block(ids, start, block):
    out = ids.clone()
    out[:, start : start + block.shape[1]] = block
    return out


# --------------------------------------------------------------------------- forward


def test_forward_shape_and_dtype():
    model = tiny_model(dtype=torch.float32)
    logits = model(random_ids(11, 0, batch=2))
    assert logits.shape == (2, 11, VOCAB) and logits.dtype == torch.float32


def test_full_layout_through_graph_attention_equals_sdpa_path():
    model = tiny_model()
    ids = random_ids(13, 1)
    assert_close(model(ids, layout=SegmentLayout.full(13)), model(ids), name="logits")


def test_no_causal_mask_every_position_sees_the_future():
    model = tiny_model()
    ids = random_ids(12, 2)
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % VOCAB
    # A bidirectional model: changing the last token changes the first position's logits.
    assert (model(ids)[0, 0] - model(changed)[0, 0]).abs().max() > 1e-6


def test_logits_invariant_to_a_shift_of_all_positions():
    # RoPE makes attention depend on relative positions only.
    model = tiny_model()
    ids = random_ids(10, 3)
    shifted = model(ids, position_ids=torch.arange(10) + 37)
    assert_close(shifted, model(ids), atol=1e-9, rtol=1e-9, name="logits")


def test_rope_theta_changes_the_model():
    model = tiny_model()
    ids = random_ids(10, 4)
    before = model(ids)
    model.config.rope_theta = 10000.0
    assert (model(ids) - before).abs().max() > 1e-6


def test_gqa_equals_multi_head_with_repeated_kv_heads():
    gqa = tiny_model(n_heads=4, n_kv_heads=2)
    mha = tiny_model(n_heads=4, n_kv_heads=4)
    state = gqa.state_dict()
    hd = gqa.config.head_dim
    for name, tensor in state.items():
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            heads = tensor.view(2, hd, -1)
            state[name] = heads.repeat_interleave(2, dim=0).reshape(4 * hd, -1)
    mha.load_state_dict(state)
    ids = random_ids(9, 5)
    assert_close(gqa(ids), mha(ids), name="sdpa path")
    layout = SegmentLayout.full(9)
    assert_close(gqa(ids, layout=layout), mha(ids, layout=layout), name="graph_attention path")


BF16_UNIT_ROUNDOFF = 2.0**-8  # 8 significant bits
BF16_ERROR_PER_LAYER = 4.0  # in units of u per (layer + 1): measured 1.7 to 2.9 (see below)


@pytest.mark.parametrize("n_layers, seed", [(1, 0), (2, 0), (2, 1), (4, 0), (4, 1)])
def test_bf16_forward_runs_and_tracks_float32(n_layers, seed):
    """The bf16 model (weights and activations in bf16, fp32 accumulation) against the same
    weights in float32. The bound comes from the dtype and the depth: bf16 rounds to 8
    significant bits (u = 2**-8) at a fixed number of points per layer (weights, norms,
    projections, attention, MLP, residual), and each layer's rounding enters the residual
    stream and is carried by every later layer, so the relative RMS error of the logits grows
    linearly with depth. Measured on these random models (2 seeds, depths 1, 2, 4, 8): 1.7u to
    2.9u per (layers + 1), half of it from rounding the weights alone. Bound: 4u (L + 1)
    relative RMS (3.1% at 2 layers, 7.8% at 4) and 4x that for the worst logit over the RMS
    logit (the largest of 480 roughly Gaussian errors is about 3.3 of their RMS); the former
    test allowed 10% of max|logit| at 2 layers."""
    ids = random_ids(10, 6 + seed)
    reference = tiny_model(n_layers=n_layers, dtype=torch.float32, seed=seed)(ids).detach()
    logits = tiny_model(n_layers=n_layers, dtype=torch.bfloat16, seed=seed)(ids).detach()
    assert logits.dtype == torch.bfloat16
    error = logits.float() - reference
    rms = reference.pow(2).mean().sqrt()
    bound = BF16_ERROR_PER_LAYER * BF16_UNIT_ROUNDOFF * (n_layers + 1)
    relative_rms = float(error.pow(2).mean().sqrt() / rms)
    assert relative_rms < bound, f"relative RMS error {relative_rms:.4f} >= {bound:.4f}"
    worst = float(error.abs().max() / rms)
    assert worst < 4 * bound, f"worst logit error {worst:.4f} RMS logits >= {4 * bound:.4f}"


# --------------------------------------------------------------------------- KV cache

PREFIX, BLOCK, SUFFIX = 6, 8, 7
TOTAL = PREFIX + BLOCK + SUFFIX


def block_positions(copies=1):
    return torch.arange(PREFIX, PREFIX + BLOCK).repeat(copies)


@pytest.mark.parametrize("mode", ["dual", "prefix"])
def test_prefill_returns_the_full_forward(mode):
    model = tiny_model()
    ids = random_ids(TOTAL, 7)
    logits, cache = model.prefill(ids, block_start=PREFIX, block_end=PREFIX + BLOCK, mode=mode)
    assert_close(logits, model(ids), name="prefill logits")
    assert cache.real_rows == (BLOCK if mode == "dual" else BLOCK + SUFFIX)
    assert cache.prefix_len == PREFIX and cache.suffix_len == (SUFFIX if mode == "dual" else 0)


@pytest.mark.parametrize("mode", ["dual", "prefix"])
def test_cached_forward_of_the_prefill_state_equals_full_forward(mode):
    model = tiny_model()
    ids = random_ids(TOTAL, 8)
    full = model(ids)
    _, cache = model.prefill(ids, block_start=PREFIX, block_end=PREFIX + BLOCK, mode=mode)
    rows = slice(PREFIX, PREFIX + cache.real_rows)
    out = model(ids[:, rows], position_ids=cache.real_position_ids(), cache=cache)
    assert_close(out, full[:, rows], name=f"{mode} cache logits")


@pytest.mark.parametrize("mode", ["dual", "prefix"])
def test_one_layer_cached_forward_is_exact_for_any_new_block(mode):
    # With one layer the context's keys depend on context tokens only, so a frozen cache is
    # exact even after the block changed.
    model = tiny_model(n_layers=1)
    ids = random_ids(TOTAL, 9)
    _, cache = model.prefill(ids, block_start=PREFIX, block_end=PREFIX + BLOCK, mode=mode)
    new_ids = with_block(ids, PREFIX, random_ids(BLOCK, 10))
    rows = slice(PREFIX, PREFIX + cache.real_rows)
    out = model(new_ids[:, rows], position_ids=cache.real_position_ids(), cache=cache)
    assert_close(out, model(new_ids)[:, rows], name=f"{mode} cache logits")


def test_dual_cache_is_frozen_for_a_deeper_model():
    # With two layers the suffix's hidden states saw the old block: the dual cache gives what
    # Fast-dLLM's dual cache gives, not a fresh full forward (this is its documented trade).
    model = tiny_model(n_layers=2)
    ids = random_ids(TOTAL, 11)
    _, cache = model.prefill(ids, block_start=PREFIX, block_end=PREFIX + BLOCK, mode="dual")
    new_ids = with_block(ids, PREFIX, random_ids(BLOCK, 12))
    out = model(new_ids[:, PREFIX : PREFIX + BLOCK], position_ids=block_positions(), cache=cache)
    assert (out - model(new_ids)[:, PREFIX : PREFIX + BLOCK]).abs().max() > 1e-8


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["dual", "prefix"])
@pytest.mark.parametrize("num_drafts", [1, 3])
def test_packed_drafts_with_cache_equal_each_draft_alone(mode, num_drafts, dtype):
    model = tiny_model(dtype=dtype)
    ids = random_ids(TOTAL, 13)
    _, cache = model.prefill(ids, block_start=PREFIX, block_end=PREFIX + BLOCK, mode=mode)
    real = cache.real_rows
    root = ids[:, PREFIX : PREFIX + real]
    # A prefix-cache draft is a copy of block + suffix whose block differs from the root's.
    drafts = [with_block(root, 0, random_ids(BLOCK, 100 + i)) for i in range(num_drafts)]
    positions = cache.real_position_ids().repeat(num_drafts + 1)
    before = [t.clone() for t in (cache.layers[0].prefix_k, cache.layers[-1].prefix_v)]
    packed = model(torch.cat([root, *drafts], dim=1), position_ids=positions, cache=cache)
    assert packed.shape == (1, (num_drafts + 1) * real, VOCAB)
    alone_root = model(root, position_ids=cache.real_position_ids(), cache=cache)
    assert_close(packed[:, :real], alone_root, name="root rows")
    for i, draft in enumerate(drafts):
        alone = model(draft, position_ids=cache.real_position_ids(), cache=cache)
        got = packed[:, (i + 1) * real : (i + 2) * real]
        # Attention is segment-aligned, so it does the same arithmetic packed or alone; the
        # projections are one GEMM over all rows, and the CPU BLAS blocks float64 GEMMs by row
        # count (last-bit differences). So: equal to rounding, and the same tokens.
        assert_close(got, alone, name=f"draft {i}")
        assert torch.equal(got.argmax(-1), alone.argmax(-1)), f"draft {i}: tokens differ"
    after = (cache.layers[0].prefix_k, cache.layers[-1].prefix_v)
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "forward modified the cache"


def test_packed_drafts_with_explicit_spiffy_layout():
    model = tiny_model()
    ids = random_ids(TOTAL, 14)
    _, cache = model.prefill(ids, block_start=PREFIX, block_end=PREFIX + BLOCK, mode="dual")
    drafts = [random_ids(BLOCK, 200 + i) for i in range(2)]
    layout = SegmentLayout.spiffy(PREFIX, BLOCK, SUFFIX, 2, cached=True)
    rows = torch.cat([ids[:, PREFIX : PREFIX + BLOCK], *drafts], dim=1)
    packed = model(rows, position_ids=block_positions(3), layout=layout, cache=cache)
    for i, draft in enumerate(drafts):
        alone = model(draft, position_ids=block_positions(), cache=cache)
        assert_close(packed[:, (i + 1) * BLOCK : (i + 2) * BLOCK], alone, name=f"draft {i}")


def test_cache_batch_of_one_serves_a_batch():
    model = tiny_model()
    ids = random_ids(TOTAL, 15)
    _, cache = model.prefill(ids, block_start=PREFIX, block_end=PREFIX + BLOCK, mode="dual")
    blocks = torch.cat([random_ids(BLOCK, 300), random_ids(BLOCK, 301)])
    out = model(blocks, position_ids=block_positions(), cache=cache)
    for row in range(2):
        alone = model(blocks[row : row + 1], position_ids=block_positions(), cache=cache)
        assert_close(out[row : row + 1], alone, name=f"row {row}")


# ------------------------------------------------------------ uncached packed layout


def uncached_packed_difference(n_layers):
    """Max |logit difference| between drafts evaluated in the uncached packed Spiffy layout and
    each draft's own full forward, and the same for the root rows."""
    model = tiny_model(n_layers=n_layers)
    ids = random_ids(TOTAL, 16)
    drafts = [random_ids(BLOCK, 400 + i) for i in range(3)]
    layout = SegmentLayout.spiffy(PREFIX, BLOCK, SUFFIX, len(drafts), cached=False)
    packed_ids = torch.cat([ids, *drafts], dim=1)
    positions = torch.cat([torch.arange(TOTAL), block_positions(len(drafts))])
    packed = model(packed_ids, position_ids=positions, layout=layout)
    root_diff = (packed[:, :TOTAL] - model(ids)).abs().max().item()
    draft_diff = 0.0
    for i, draft in enumerate(drafts):
        got = packed[:, TOTAL + i * BLOCK : TOTAL + (i + 1) * BLOCK]
        expected = model(with_block(ids, PREFIX, draft))[:, PREFIX : PREFIX + BLOCK]
        draft_diff = max(draft_diff, (got - expected).abs().max().item())
    return root_diff, draft_diff


def test_uncached_packed_layout_one_layer_is_exact():
    root_diff, draft_diff = uncached_packed_difference(n_layers=1)
    assert root_diff < 1e-10 and draft_diff < 1e-10


def test_uncached_packed_layout_on_a_deep_bidirectional_model_is_approximate():
    # The context's hidden states see the root, not the draft, so drafts are near-lossless
    # only (docs/DESIGN.md §2). Measured and reported, not hidden; the root rows are exact.
    root_diff, draft_diff = uncached_packed_difference(n_layers=3)
    print(
        f"\nuncached packed layout, 3 layers: root max|diff| {root_diff:.3g}, "
        f"draft max|diff| {draft_diff:.3g}"
    )
    assert root_diff < 1e-10
    assert draft_diff > 1e-6


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    model = tiny_model()
    ids = random_ids(TOTAL, 17)
    with pytest.raises(ValueError, match="input_ids must be a \\[B, T\\]"):
        model(ids[0])
    with pytest.raises(ValueError, match="outside"):
        model(torch.full((1, 4), VOCAB))
    with pytest.raises(ValueError, match="int64 or int32"):
        model(ids.float())
    with pytest.raises(ValueError, match="layout has"):
        model(ids, layout=SegmentLayout.full(TOTAL + 1))
    with pytest.raises(ValueError, match="position_ids must have shape"):
        model(ids, position_ids=torch.arange(TOTAL + 2))
    with pytest.raises(ValueError, match="block_start"):
        model.prefill(ids, block_start=5, block_end=5)
    with pytest.raises(ValueError, match="mode must be one of"):
        model.prefill(ids, block_start=2, block_end=5, mode="suffix")
    _, cache = model.prefill(ids, block_start=PREFIX, block_end=PREFIX + BLOCK, mode="dual")
    block = ids[:, PREFIX : PREFIX + BLOCK]
    with pytest.raises(ValueError, match="position_ids are required"):
        model(block, cache=cache)
    with pytest.raises(ValueError, match="needs the 8 real rows"):
        model(block[:, :4], position_ids=torch.arange(4), cache=cache)
    with pytest.raises(ValueError, match="whole copies"):
        model(ids[:, : BLOCK + 3], position_ids=torch.arange(BLOCK + 3), cache=cache)
    with pytest.raises(ValueError, match="cache must be a KVCache"):
        model(block, position_ids=block_positions(), cache={"k": 1})
    with pytest.raises(ValueError, match="cache batch"):
        _, batch_cache = model.prefill(
            random_ids(TOTAL, 18, batch=2), block_start=PREFIX, block_end=PREFIX + BLOCK
        )
        model(torch.cat([block] * 3), position_ids=block_positions(), cache=batch_cache)
    with pytest.raises(ValueError, match="backend must be one of"):
        LLaDAModel(model.config, backend="cuda")
    with pytest.raises(ValueError, match="must be a multiple of n_kv_heads"):
        LLaDAConfig(
            d_model=64,
            n_heads=4,
            n_kv_heads=3,
            n_layers=1,
            mlp_hidden_size=8,
            vocab_size=8,
            mask_token_id=1,
            eos_token_id=0,
        )
    assert isinstance(cache, KVCache)


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_and_specials(tmp_path):
    tok = CharTokenizer()
    text = "Q: 12+3*4=?\nA: 3*4=12; 12+12=24. #### 24\ndef f(xs):\n    return xs[::-1]\n"
    assert tok.decode(tok.encode(text)) == text
    assert len({tok.eos_token_id, tok.mask_token_id, tok.unk_token_id}) == 3
    assert tok.encode("é") == [tok.unk_token_id]
    assert tok.decode([tok.mask_token_id, *tok.encode("ab")]) == "ab"
    assert tok.decode([tok.mask_token_id], skip_special_tokens=False) == "<|mask|>"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])
    tok.save(tmp_path / "tokenizer.json")
    assert CharTokenizer.load(tmp_path / "tokenizer.json").id_to_piece == tok.id_to_piece
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        CharTokenizer.load(tmp_path / "nope.json")


# --------------------------------------------------------------------------- data


def test_data_is_deterministic_and_splits_are_disjoint():
    assert tinydata.examples("train", 50) == tinydata.examples("train", 50)
    assert tinydata.examples("train", 50, seed=1) != tinydata.examples("train", 50)
    train_prompts = {e.prompt for e in tinydata.examples("train", 3000)}
    held = tinydata.heldout_prompts(40)
    calib = tinydata.calibration_prompts(20)
    for kind in tinydata.KINDS:
        assert len({e.prompt for e in held[kind]}) == 40
        assert all(e.kind == kind for e in held[kind])
        assert not train_prompts & {e.prompt for e in held[kind]}
        assert not {e.prompt for e in calib[kind]} & {e.prompt for e in held[kind]}


def test_arithmetic_answers_are_correct():
    for example in tinydata.examples("train", 300, kinds=("arith",)):
        expression = example.prompt[len("Q: ") : example.prompt.index("=?")]
        assert example.value == eval(expression)  # noqa: S307 - generated digits and + - *
        for step in example.answer.split(". ####")[0].split("; "):
            left, right = step.split("=")
            assert eval(left) == int(right)  # noqa: S307
    for example in tinydata.examples("train", 200, kinds=("word",)):
        steps = example.answer.split(". ####")[0].split("; ")
        assert int(steps[-1].split("=")[1]) == example.value


def test_code_answers_are_valid_python():
    for example in tinydata.examples("train", 100, kinds=("code",)):
        compile(example.answer, "<generated>", "exec")
        assert example.value is None


def test_bad_data_arguments():
    with pytest.raises(ValueError, match="split must be one of"):
        tinydata.examples("test", 3)
    with pytest.raises(ValueError, match="kinds: each must be one of"):
        tinydata.examples("train", 3, kinds=("poetry",))
    with pytest.raises(ValueError, match="n must be >= 0"):
        tinydata.examples("train", -1)


# ------------------------------------------------------------------- training objective


def test_noise_never_masks_prompts_and_follows_the_level():
    tok = CharTokenizer()
    examples = tinydata.examples("train", 64)
    ids, prompt_lengths = make_batch(examples, tok, 160)
    assert (ids[:, -1] == tok.eos_token_id).all()  # answers padded with EOS
    noisy, masked, level, is_answer = add_mask_noise(
        ids, prompt_lengths, torch.Generator().manual_seed(0), tok.mask_token_id
    )
    assert not (masked & ~is_answer).any()
    assert torch.equal(noisy[~masked], ids[~masked])
    assert (noisy[masked] == tok.mask_token_id).all()
    rate = masked.sum(1) / is_answer.sum(1)
    assert (rate - level[:, 0]).abs().mean() < 0.08


# --------------------------------------------------------------------- the bundled model


@pytest.fixture(scope="module")
def bundled():
    return load_model("tiny", dtype=torch.float32, backend="torch")


def test_load_tiny_returns_model_and_tokenizer(bundled):
    tok = bundled.tokenizer
    assert isinstance(tok, CharTokenizer)
    assert bundled.config.mask_token_id == tok.mask_token_id
    assert bundled.config.eos_token_id == tok.eos_token_id
    assert bundled.config.vocab_size == tok.vocab_size
    assert not bundled.training


def masked_answer_sharpness(model):
    """Mean top-1 probability and top-1 accuracy at masked answer positions of 16 held-out
    word problems (random mask ratio per example, seeded)."""
    tok = model.tokenizer
    examples = tinydata.heldout_prompts(16)["word"]
    ids, prompt_lengths = make_batch(examples, tok, 160)
    noisy, masked, _, _ = add_mask_noise(
        ids, prompt_lengths, torch.Generator().manual_seed(0), tok.mask_token_id
    )
    with torch.no_grad():
        probs = model(noisy).softmax(-1)[masked]
    top_prob, top_token = probs.max(-1)
    return top_prob.mean().item(), (top_token == ids[masked]).float().mean().item()


def test_bundled_model_is_trained_and_sharp_on_predictable_text(bundled):
    # Code answers are template text: a trained model is confident and right on most masked
    # characters (measured 0.87 / 0.89); the same architecture at random init is near
    # uniform (measured 0.09 / 0.002), which this also checks, so the metric can tell.
    confidence, accuracy = masked_answer_sharpness(bundled)
    assert confidence > 0.6 and accuracy > 0.7, (confidence, accuracy)
    random_model = LLaDAModel(bundled.config, backend="torch", tokenizer=bundled.tokenizer)
    random_confidence, random_accuracy = masked_answer_sharpness(random_model.init_weights(0))
    assert random_confidence < 0.3 and random_accuracy < 0.1, (random_confidence, random_accuracy)
