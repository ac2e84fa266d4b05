"""LLaDA checkpoint directories: save/load round trips (single file and sharded), the
LLaDA-8B name and shape map on the meta device, and clear errors for broken checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from tempfile import TemporaryDirectory

import pytest
import torch
from safetensors.torch import load_file, save_file

import spiffy_triton
from spiffy_triton.models import (
    CharTokenizer,
    LLaDAConfig,
    LLaDAModel,
    expected_shapes,
    llada_8b_config,
    load_checkpoint,
    load_model,
    read_config,
    save_checkpoint,
)

# The keys of LLaDA-8B-Instruct's config.json that describe the architecture, plus a few of
# its bookkeeping keys (kept, not interpreted).
LLADA_STYLE_CONFIG = {
    "activation_type": "silu",
    "alibi": False,
    "architectures": ["LLaDAModelLM"],
    "block_type": "llama",
    "d_model": 64,
    "embedding_size": 56,
    "eos_token_id": 1,
    "flash_attention": False,
    "include_bias": False,
    "init_fn": "mitchell",
    "layer_norm_type": "rms",
    "mask_token_id": 50,
    "max_sequence_length": 256,
    "mlp_hidden_size": 96,
    "mlp_ratio": 4,
    "model_type": "llada",
    "n_heads": 4,
    "n_kv_heads": 2,
    "n_layers": 2,
    "pad_token_id": 1,
    "rms_norm_eps": 1e-5,
    "rope": True,
    "rope_full_precision": True,
    "rope_theta": 500000.0,
    "vocab_size": 52,
    "weight_tying": False,
}


def tiny_random_model():
    config = LLaDAConfig.from_dict(dict(LLADA_STYLE_CONFIG))
    return LLaDAModel(config, backend="torch").init_weights(seed=3).eval()


def write_llada_dir(path, state, config=LLADA_STYLE_CONFIG):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file(state, str(path / "model.safetensors"))


@pytest.mark.parametrize("sharded", [False, True])
def test_save_load_round_trip(tmp_path, sharded):
    model = tiny_random_model()
    model.tokenizer = CharTokenizer()
    save_checkpoint(model, tmp_path, max_shard_bytes=40_000 if sharded else None)
    if sharded:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 2
        assert not (tmp_path / "model.safetensors").exists()
    loaded = load_checkpoint(tmp_path, backend="torch")
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert loaded.config == model.config
    assert loaded.config.extra["init_fn"] == "mitchell"  # unknown keys survive
    assert loaded.tokenizer.id_to_piece == model.tokenizer.id_to_piece
    ids = torch.randint(0, 52, (1, 9))
    assert torch.equal(loaded(ids), model(ids))


def test_saved_files_use_llada_names_and_keys(tmp_path):
    model = tiny_random_model()
    save_checkpoint(model, tmp_path)
    names = set(load_file(str(tmp_path / "model.safetensors")))
    assert names == set(expected_shapes(model.config))
    assert "model.transformer.blocks.1.ff_proj.weight" in names
    config = json.loads((tmp_path / "config.json").read_text())
    for key in (
        "d_model",
        "n_heads",
        "n_kv_heads",
        "n_layers",
        "mlp_hidden_size",
        "vocab_size",
        "embedding_size",
        "rope_theta",
        "rms_norm_eps",
        "mask_token_id",
        "max_sequence_length",
    ):
        assert config[key] == LLADA_STYLE_CONFIG[key], key


def test_save_in_another_dtype(tmp_path):
    model = tiny_random_model()
    save_checkpoint(model, tmp_path, dtype=torch.bfloat16)
    loaded = load_checkpoint(tmp_path, dtype=torch.float32)
    w = "model.transformer.wte.weight"
    assert torch.equal(loaded.state_dict()[w], model.state_dict()[w].bfloat16().float())


def test_load_model_by_path_and_dtype(tmp_path):
    save_checkpoint(tiny_random_model(), tmp_path)
    model = load_model(tmp_path, dtype=torch.float64, backend="torch")
    assert model.dtype == torch.float64 and model.backend == "torch" and model.tokenizer is None


def test_llada_8b_on_meta_maps_every_name_and_shape():
    config = llada_8b_config()
    with torch.device("meta"):
        model = LLaDAModel(config)
    shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    expected = expected_shapes(config)
    assert shapes == expected
    assert len(expected) == 1 + 9 * 32 + 2
    assert expected["model.transformer.wte.weight"] == (126464, 4096)
    assert expected["model.transformer.blocks.31.ff_out.weight"] == (4096, 12288)
    assert expected["model.transformer.blocks.0.k_proj.weight"] == (4096, 4096)
    assert expected["model.transformer.ff_out.weight"] == (126464, 4096)
    total = sum(p.numel() for p in model.parameters())
    assert 8.0e9 < total < 8.1e9, total  # LLaDA-8B: 8.02B parameters
    assert config.head_dim == 128 and config.rope_theta == 500000.0
    assert LLaDAConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


# --------------------------------------------------------------------------- errors


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        load_checkpoint(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(LLADA_STYLE_CONFIG))
    with pytest.raises(FileNotFoundError, match="missing model.safetensors"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither"):
        load_model(tmp_path / "absent")


def test_missing_shard(tmp_path):
    save_checkpoint(tiny_random_model(), tmp_path, max_shard_bytes=40_000)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"missing weight shard {shard.name}"):
        load_checkpoint(tmp_path)


def test_missing_tensor(tmp_path):
    state = tiny_random_model().state_dict()
    del state["model.transformer.blocks.1.up_proj.weight"]
    write_llada_dir(tmp_path, state)
    with pytest.raises(ValueError, match="missing tensors.*blocks.1.up_proj.weight"):
        load_checkpoint(tmp_path)


def test_misshaped_tensor(tmp_path):
    state = tiny_random_model().state_dict()
    state["model.transformer.blocks.0.q_proj.weight"] = torch.zeros(64, 32)
    write_llada_dir(tmp_path, state)
    with pytest.raises(ValueError, match=r"q_proj.weight' has shape \(64, 32\).*\(64, 64\)"):
        load_checkpoint(tmp_path)


def test_unknown_tensor(tmp_path):
    state = tiny_random_model().state_dict()
    state["model.transformer.blocks.0.q_proj.bias"] = torch.zeros(64)
    write_llada_dir(tmp_path, state)
    with pytest.raises(ValueError, match="unknown tensor 'model.transformer.blocks.0.q_proj.bias'"):
        load_checkpoint(tmp_path)


def test_index_listing_a_tensor_its_shard_lacks(tmp_path):
    save_checkpoint(tiny_random_model(), tmp_path, max_shard_bytes=40_000)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first_shard = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))[0]
    assert index["weight_map"]["model.transformer.ln_f.weight"] != first_shard
    index["weight_map"]["model.transformer.ln_f.weight"] = first_shard
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="does not hold"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"d_model": None}, "missing required LLaDA config keys \\['d_model'\\]"),
        ({"weight_tying": True}, "weight_tying=True is not supported"),
        ({"layer_norm_type": "default"}, "layer_norm_type='default' is not supported"),
        ({"include_bias": True}, "include_bias=True is not supported"),
        ({"n_kv_heads": 3}, "multiple of n_kv_heads"),
        ({"mask_token_id": 999}, "mask_token_id \\(999\\) outside the embedding"),
    ],
)
def test_bad_config(tmp_path, change, message):
    config = {k: v for k, v in {**LLADA_STYLE_CONFIG, **change}.items() if v is not None}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        read_config(tmp_path)


def test_config_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{d_model: 4")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_config(tmp_path)


def test_bundled_name_missing_asset_is_a_clear_error(monkeypatch, tmp_path):
    from spiffy_triton import models

    monkeypatch.setitem(models.BUNDLED_MODELS, "tiny", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="bundled model 'tiny' is missing"):
        load_model("tiny")
    with pytest.raises(ValueError, match="dtype must be a floating"):
        load_model("tiny", dtype=torch.int64)


def test_torch_only_safetensors_reader_matches_the_package():
    """The fallback reader (bare GPU boxes without the `safetensors` package) gives the same
    names, dtypes, shapes and bits as `safetensors.safe_open` on the bundled checkpoint and on
    a file of every supported dtype."""
    import safetensors.torch
    from safetensors import safe_open

    from spiffy_triton.models.safetensors_reader import DTYPES, SafetensorsFile

    bundled = str(Path(spiffy_triton.__file__).parent / "assets" / "tiny" / "model.safetensors")
    with TemporaryDirectory() as tmp:
        mixed = str(Path(tmp) / "mixed.safetensors")
        tensors = {f"t_{d}": (torch.arange(6) % 2).to(d).reshape(2, 3) for d in DTYPES.values()}
        tensors["empty"] = torch.zeros(0, 4)
        safetensors.torch.save_file(tensors, mixed, metadata={"note": "probe"})
        for path in (bundled, mixed):
            with safe_open(path, framework="pt") as expected, SafetensorsFile(path) as actual:
                assert sorted(actual.keys()) == sorted(expected.keys())
                for name in expected.keys():
                    a, e = actual.get_tensor(name), expected.get_tensor(name)
                    assert a.dtype == e.dtype and a.shape == e.shape and torch.equal(a, e), name
        Path(mixed).write_bytes(Path(mixed).read_bytes()[:6])
        with pytest.raises(ValueError, match="not a safetensors file"):
            SafetensorsFile(mixed)
