"""Checkpoint folders in the layouts the upstream releases ship, built locally (issue #21):
LLaDA (LLaDA's config keys and tensor names), Dream (Qwen2 names) and SDAR (Qwen3 names, with
and without ``attention_bias``), each sharded with ``model.safetensors.index.json`` and with a
Hugging Face ``tokenizer.json`` made by the `tokenizers` library. Each loads through
`load_model`, computes the logits of the model it was written from (for SDAR with
``attention_bias``: transformers' Qwen3, o_proj bias included), and decodes text through its
tokenizer.

Also: an int draft budget fits the block (SDAR's native block_length 4), and a block-causal
model's block_length defaults to its trained block size, with a warning on a mismatch."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import save_file
from test_checkpoint import LLADA_STYLE_CONFIG
from utils import TINY_QWEN_MASK_ID, tiny_qwen_config, transformers_qwen_kwargs
from utils import random_token_ids as random_ids

from spiffy_triton.decoding import BlockLengthWarning, generate
from spiffy_triton.graph import DraftGraph
from spiffy_triton.layout import SegmentLayout
from spiffy_triton.models import (
    DreamModel,
    LLaDAConfig,
    LLaDAModel,
    QwenConfig,
    SDARModel,
    load_model,
    model_architecture,
)
from spiffy_triton.models.dream import HFTokenizer

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "and", "is", "big"]


def write_hf_tokenizer(path, vocab_size: int, specials: dict[int, str]) -> dict[str, int]:
    """A Hugging Face ``tokenizer.json`` (WordLevel, whitespace) of `vocab_size` ids: the
    `specials` at their ids (added as special tokens), WORDS and filler words elsewhere.
    Returns the vocabulary."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    words = iter(WORDS + [f"w{i}" for i in range(vocab_size)])
    vocab = {specials[i] if i in specials else next(words): i for i in range(vocab_size)}
    unk = next(t for t in specials.values() if "unk" in t)
    tokenizer = Tokenizer(WordLevel(vocab, unk_token=unk))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in specials.values()])
    tokenizer.save(str(path / "tokenizer.json"))
    return vocab


def write_sharded(path, state: dict[str, torch.Tensor], shards: int = 2) -> None:
    """The weights as ``model-0000i-of-0000n.safetensors`` plus the index, as Hugging Face's
    save_pretrained writes them (names in order, cut into `shards` files)."""
    names = list(state)
    per = -(-len(names) // shards)
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n].contiguous() for n in names[i * per : (i + 1) * per]}
        save_file(part, str(path / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def check_tokenizer(model, path, vocab) -> None:
    """`model.tokenizer` is the folder's Hugging Face tokenizer: the ids `tokenizers` gives."""
    from tokenizers import Tokenizer

    assert isinstance(model.tokenizer, HFTokenizer), type(model.tokenizer)
    text = "the cat sat on a big mat"
    expected = Tokenizer.from_file(str(path / "tokenizer.json")).encode(text).ids
    assert model.tokenizer.encode(text) == expected == [vocab[w] for w in text.split()]
    assert model.tokenizer.decode(expected) == text


def decode_text(model, block_length: int | None = None) -> str:
    """A short greedy decode of a tokenized prompt (the README's flow), as text."""
    ids = torch.tensor([model.tokenizer.encode("the dog ran far and")])
    out = generate(model, ids, gen_length=8, block_length=block_length)
    assert out.tokens.shape == (1, ids.shape[1] + 8)
    return model.tokenizer.decode(out.tokens[0, ids.shape[1] :].tolist())


# ------------------------------------------------------------------------------------ LLaDA


def test_llada_folder_with_hf_tokenizer_json(tmp_path):
    """What LLaDA releases ship: LLaDA's config keys, blocks under model.transformer.*, a
    sharded index and a Hugging Face tokenizer.json (read as such, not as the char one)."""
    config = dict(LLADA_STYLE_CONFIG)
    model = LLaDAModel(LLaDAConfig.from_dict(dict(config)), backend="torch").init_weights(seed=5)
    state = model.state_dict()
    assert "model.transformer.blocks.0.attn_out.weight" in state  # LLaDA's own names
    (tmp_path / "config.json").write_text(json.dumps(config))
    write_sharded(tmp_path, state, shards=3)
    specials = {0: "<|unk|>", 1: "<|eot_id|>", 50: "<|mdm_mask|>"}
    vocab = write_hf_tokenizer(tmp_path, config["vocab_size"], specials)
    assert vocab["<|mdm_mask|>"] == config["mask_token_id"]

    assert model_architecture(tmp_path) == "llada"
    loaded = load_model(tmp_path, backend="torch")
    assert type(loaded) is LLaDAModel
    check_tokenizer(loaded, tmp_path, vocab)
    x = torch.randint(0, 50, (1, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    text = decode_text(loaded, block_length=8)
    assert all(word in vocab for word in text.split()), text


# ------------------------------------------------------------------------------------ Dream


def test_dream_folder_written_by_transformers_sharded_with_tokenizer(tmp_path):
    """Dream's layout: Qwen2 names (q/k/v bias, no o bias), written by transformers'
    save_pretrained in shards, Dream's config keys and a Hugging Face tokenizer.json."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    ours = DreamModel(tiny_qwen_config(), backend="torch").init_weights(7, std=0.5).eval()
    hf = Qwen2ForCausalLM(Qwen2Config(**transformers_qwen_kwargs(ours.config)))
    assert not hf.load_state_dict(ours.state_dict(), strict=True).missing_keys
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    data = json.loads((tmp_path / "config.json").read_text())
    data.update(model_type="Dream", architectures=["DreamModel"], mask_token_id=TINY_QWEN_MASK_ID)
    (tmp_path / "config.json").write_text(json.dumps(data))
    specials = {0: "<|unk|>", 2: "<|endoftext|>", TINY_QWEN_MASK_ID: "<|mask|>"}
    vocab = write_hf_tokenizer(tmp_path, 64, specials)

    loaded = load_model(tmp_path, backend="torch")
    assert type(loaded) is DreamModel
    check_tokenizer(loaded, tmp_path, vocab)
    x = random_ids(10)
    with torch.no_grad():
        assert torch.equal(loaded(x), ours(x))
    text = decode_text(loaded, block_length=8)
    assert all(word in vocab for word in text.split()), text


# ------------------------------------------------------------------------------------- SDAR

SDAR_BLOCK = 4  # SDAR-1.7B-Chat's block_size


def sdar_folder(path, *, attention_bias: bool) -> tuple[SDARModel, torch.nn.Module, dict]:
    """A Qwen3 model written by transformers' save_pretrained (sharded) with SDAR's config keys
    and a tokenizer.json; returns our source model, transformers' model and the vocabulary."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = tiny_qwen_config(
        head_dim=16,
        block_size=SDAR_BLOCK,
        tie_word_embeddings=True,
        model_type="sdar",
        attention_bias=attention_bias,
    )
    ours = SDARModel(config, backend="torch").init_weights(3, std=0.5).double().eval()
    hf = Qwen3ForCausalLM(
        Qwen3Config(
            **transformers_qwen_kwargs(config),
            head_dim=16,
            tie_word_embeddings=True,
            attention_bias=attention_bias,
            attn_implementation="sdpa",
        )
    )
    hf = hf.double().eval()
    result = hf.load_state_dict(ours.state_dict(), strict=False)
    assert result.missing_keys == ["lm_head.weight"] and not result.unexpected_keys
    hf.save_pretrained(path, max_shard_size="40KB")
    data = json.loads((path / "config.json").read_text())
    assert data["attention_bias"] is attention_bias
    data.update(
        model_type="sdar",
        architectures=["SDARForCausalLM"],
        mask_token_id=TINY_QWEN_MASK_ID,
        block_size=SDAR_BLOCK,
    )
    (path / "config.json").write_text(json.dumps(data))
    specials = {0: "<|unk|>", 2: "<|endoftext|>", TINY_QWEN_MASK_ID: "<|MASK|>"}
    return ours, hf, write_hf_tokenizer(path, 64, specials)


def block_causal_mask(length: int) -> torch.Tensor:
    chunks = [SDAR_BLOCK] * (length // SDAR_BLOCK) + [length % SDAR_BLOCK] * bool(
        length % SDAR_BLOCK
    )
    visible = SegmentLayout.block_causal(chunks).to_dense()
    mask = torch.zeros(length, length, dtype=torch.float64)
    return mask.masked_fill_(~visible, torch.finfo(torch.float64).min)[None, None]


@pytest.mark.parametrize("attention_bias", [False, True])
def test_sdar_folder_written_by_transformers_qwen3(tmp_path, attention_bias):
    """SDAR's layout (Qwen3 names, tied embeddings, sharded). With attention_bias=true Qwen3
    gives q/k/v *and* o_proj a bias: the folder holds o_proj.bias, it loads, and the logits are
    transformers' Qwen3 logits under SDAR's block-causal mask."""
    ours, hf, vocab = sdar_folder(tmp_path, attention_bias=attention_bias)
    shards = list(tmp_path.glob("model-*-of-*.safetensors"))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(shards) > 1
    has_o_bias = "model.layers.0.self_attn.o_proj.bias" in index["weight_map"]
    assert has_o_bias is attention_bias

    loaded = load_model(tmp_path, dtype=torch.float64, backend="torch")
    assert type(loaded) is SDARModel and loaded.config.attention_bias is attention_bias
    check_tokenizer(loaded, tmp_path, vocab)
    x = random_ids(13)
    with torch.no_grad():
        theirs = hf(x, attention_mask=block_causal_mask(13)).logits
        mine = loaded(x)
        assert torch.equal(mine, ours(x))
        torch.testing.assert_close(mine, theirs, atol=2e-5, rtol=1e-5)
        if attention_bias:  # the bias is used: without it the logits move
            bias = loaded.model.layers[0].self_attn.o_proj.bias
            assert bias.abs().max() > 0.1
            bias.zero_()
            assert (loaded(x) - theirs).abs().max() > 1e-3
    text = decode_text(load_model(tmp_path, backend="torch"))  # default: block_size 4
    assert all(word in vocab for word in text.split()), text


def test_qwen3_o_proj_bias_only_with_attention_bias_and_never_for_qwen2():
    def shapes(**kw):
        return tiny_qwen_config(**kw).parameter_shapes()

    o_bias = "model.layers.1.self_attn.o_proj.bias"
    assert shapes(model_type="sdar", attention_bias=True)[o_bias] == (32,)
    assert o_bias not in shapes(model_type="sdar")
    assert o_bias not in shapes(model_type="qwen3", attention_bias=False)
    assert o_bias not in shapes(model_type="Dream")  # Qwen2: q/k/v bias only
    assert "model.layers.1.self_attn.q_proj.bias" in shapes(model_type="Dream")
    assert QwenConfig.from_dict({**tiny_qwen_config().to_dict(), "model_type": "qwen3"}).qk_norm


# ---------------------------------------------------------------- budgets and block lengths


def tiny_sdar(block_size: int | None = SDAR_BLOCK) -> SDARModel:
    config = tiny_qwen_config(
        head_dim=16, block_size=block_size, tie_word_embeddings=True, model_type="sdar"
    )
    return SDARModel(config, backend="torch").init_weights(1, std=0.5).double().eval()


@pytest.mark.parametrize("budget", [8, 16])
def test_int_budget_fits_sdar_native_block_of_4(budget):
    """graph=8 or 16 with block_length 4: the best default graph whose position ranks fit the
    block (default(8) itself needs rank 5), and Spiffy's tokens are vanilla's."""
    assert DraftGraph.default(budget).max_position_rank > SDAR_BLOCK
    model, prompt = tiny_sdar(), random_ids(8)
    kwargs = dict(gen_length=16, block_length=SDAR_BLOCK, cache="prefix", max_drafts=None)
    vanilla = generate(model, prompt, **{k: v for k, v in kwargs.items() if k != "max_drafts"})
    spiffy = generate(model, prompt, graph=budget, **kwargs)
    assert torch.equal(spiffy.tokens, vanilla.tokens)
    assert spiffy.stats.graph == f"default-{budget}-block{SDAR_BLOCK}"
    assert spiffy.nfe < vanilla.nfe


def test_default_graph_for_a_block():
    """Fitted defaults: within the block, nested like the plain ones, and the plain graph
    itself whenever that fits; a block too short for the budget says so."""
    for block in (1, 2, 3, 4, 5, 8, 32):
        available = {1: 3, 2: 15}.get(block, 16)  # nodes with position rank <= block
        largest = DraftGraph.default(available, block_length=block)
        for budget in range(1, 17):
            if budget > available:
                with pytest.raises(ValueError, match=f"a block of {block} position"):
                    DraftGraph.default(budget, block_length=block)
                continue
            plain, fitted = (
                DraftGraph.default(budget),
                DraftGraph.default(budget, block_length=block),
            )
            assert fitted.max_position_rank <= block and fitted.nodes == largest.nodes[:budget]
            if plain.max_position_rank <= block:
                assert fitted.nodes == plain.nodes and fitted.name == plain.name
            else:
                assert fitted.name == f"default-{budget}-block{block}"
    for bad in (0, -1, 2.0, True, "4"):
        with pytest.raises(ValueError, match="block_length must be an int >= 1"):
            DraftGraph.default(4, block_length=bad)


def test_int_budget_too_big_for_the_block_is_a_clear_error():
    with pytest.raises(
        ValueError, match=r"graph=8 \(block_length=1\): budget 8: a block of 1 position"
    ):
        generate(tiny_sdar(block_size=1), random_ids(4), gen_length=2, graph=8)


def test_block_causal_default_block_length_is_the_trained_block_size():
    model, prompt = tiny_sdar(), random_ids(8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BlockLengthWarning)
        default = generate(model, prompt, gen_length=16)
        explicit = generate(model, prompt, gen_length=16, block_length=SDAR_BLOCK)
    assert torch.equal(default.tokens, explicit.tokens)
    with pytest.warns(BlockLengthWarning, match=r"block_length=8 differs .* trained with \(4"):
        other = generate(model, prompt, gen_length=16, block_length=8)
    assert not torch.equal(other.tokens, default.tokens)  # the blocks do change the text


def test_mismatch_warning_points_at_the_callers_line():
    with pytest.warns(BlockLengthWarning) as record:
        generate(tiny_sdar(), random_ids(8), gen_length=8, block_length=8)
    assert record[0].filename == __file__


def test_bundled_tiny_sdar_decodes_in_its_trained_blocks():
    model = load_model("tiny-sdar")
    assert model.trained_block_size == model.config.block_size == 16
    prompt = torch.tensor([model.tokenizer.encode("Q: 4+5+6=?\nA: ")])
    with warnings.catch_warnings():
        warnings.simplefilter("error", BlockLengthWarning)
        default = generate(model, prompt, gen_length=32, cache="prefix")
    explicit = generate(model, prompt, gen_length=32, block_length=16, cache="prefix")
    assert torch.equal(default.tokens, explicit.tokens)


def test_bidirectional_model_still_needs_block_length():
    model = LLaDAModel(LLaDAConfig.from_dict(dict(LLADA_STYLE_CONFIG)), backend="torch")
    assert getattr(model, "trained_block_size", None) is None
    with pytest.raises(ValueError, match="block_length is required: LLaDAModel has no trained"):
        generate(model, torch.tensor([[3, 4, 5]]), gen_length=8)
    with pytest.raises(ValueError, match="block_length"):
        generate(model, torch.tensor([[3, 4, 5]]), gen_length=8, block_length=0)


def test_cli_budget_fits_the_block_and_block_length_defaults_to_the_trained_size(capsys):
    from spiffy_triton import cli

    common = ["generate", "--model", "tiny-sdar", "--prompt", "Q: 4+5+6=?\\nA: ", "--json"]
    common += ["--gen-length", "16", "--cache", "prefix", "--backend", "torch"]
    with pytest.warns(BlockLengthWarning, match="trained with \\(16"):
        assert cli.main([*common, "--budget", "8", "--block-length", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["graph"] == "default-8-block4"
    with warnings.catch_warnings():
        warnings.simplefilter("error", BlockLengthWarning)
        assert cli.main(common) == 0  # blocks of 16, the model's own: no warning
    default = json.loads(capsys.readouterr().out)
    assert cli.main([*common, "--block-length", "16"]) == 0
    assert json.loads(capsys.readouterr().out)["completion"] == default["completion"]


def test_block_causal_adapter_takes_its_block_size_as_the_default():
    from test_hf_adapter import adapter, llama

    block_causal = adapter(llama(), attention="block_causal", block_size=4)
    assert block_causal.trained_block_size == 4
    assert adapter(llama(), block_size=4).trained_block_size is None  # bidirectional
    prompt = random_ids(6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BlockLengthWarning)
        default = generate(block_causal, prompt, gen_length=8)
    assert torch.equal(
        default.tokens, generate(block_causal, prompt, gen_length=8, block_length=4).tokens
    )
    with pytest.warns(BlockLengthWarning, match="trained with \\(4"):
        generate(block_causal, prompt, gen_length=8, block_length=8)
