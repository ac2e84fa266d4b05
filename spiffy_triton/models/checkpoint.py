"""LLaDA checkpoint directories: ``config.json`` with LLaDA's keys, and safetensors weights
under LLaDA's parameter names, in one file (``model.safetensors``) or sharded with an index
(``model.safetensors.index.json``, as Hugging Face writes them), and an optional
``tokenizer.json``: the bundled character tokenizer (``"type": "char"``) or a Hugging Face
tokenizer (what LLaDA releases ship), read as Dream's and SDAR's are (`dream.load_hf_tokenizer`).
"""

from __future__ import annotations

import json
import os
import tempfile

import torch

from .config import LLaDAConfig
from .llada import LLaDAModel

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"


def expected_shapes(config: LLaDAConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter name of a LLaDA checkpoint of `config` and its shape."""
    if hasattr(config, "parameter_shapes"):  # Dream / SDAR configs name their own parameters
        return config.parameter_shapes()
    d, hd, m = config.d_model, config.head_dim, config.mlp_hidden_size
    shapes = {"model.transformer.wte.weight": (config.embedding_size, d)}
    for i in range(config.n_layers):
        p = f"model.transformer.blocks.{i}."
        shapes[p + "attn_norm.weight"] = (d,)
        shapes[p + "ff_norm.weight"] = (d,)
        shapes[p + "q_proj.weight"] = (config.n_heads * hd, d)
        shapes[p + "k_proj.weight"] = (config.n_kv_heads * hd, d)
        shapes[p + "v_proj.weight"] = (config.n_kv_heads * hd, d)
        shapes[p + "attn_out.weight"] = (d, config.n_heads * hd)
        shapes[p + "ff_proj.weight"] = (m, d)
        shapes[p + "up_proj.weight"] = (m, d)
        shapes[p + "ff_out.weight"] = (d, m)
    shapes["model.transformer.ln_f.weight"] = (d,)
    shapes["model.transformer.ff_out.weight"] = (config.embedding_size, d)
    return shapes


def read_config(path: str | os.PathLike) -> LLaDAConfig:
    return read_config_as(path, LLaDAConfig)


def read_config_as(path: str | os.PathLike, config_class):
    """`config_class.from_dict` of the checkpoint's config.json (errors name the file)."""
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"checkpoint {path}: missing {CONFIG_FILE}")
    with open(config_path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{config_path}: not valid JSON ({error})") from None
    return config_class.from_dict(data, source=config_path)


def _weight_files(path: str) -> dict[str, list[str]]:
    """Safetensors file -> the names it should hold (None: whatever it holds)."""
    index_path = os.path.join(path, INDEX_FILE)
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index_path}: expected a non-empty 'weight_map' object")
        files: dict[str, list[str]] = {}
        for name, file in weight_map.items():
            files.setdefault(file, []).append(name)
        return files
    single = os.path.join(path, WEIGHTS_FILE)
    if os.path.isfile(single):
        return {WEIGHTS_FILE: None}
    raise FileNotFoundError(f"checkpoint {path}: missing {WEIGHTS_FILE} (or {INDEX_FILE})")


def read_state_dict(path: str | os.PathLike, config: LLaDAConfig) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint at `path`, checked against `config`'s names and shapes."""
    from .safetensors_reader import open_safetensors

    path = os.fspath(path)
    shapes = expected_shapes(config)
    tensors: dict[str, torch.Tensor] = {}
    for file, listed in _weight_files(path).items():
        file_path = os.path.join(path, file)
        if not os.path.isfile(file_path):
            raise FileNotFoundError(f"checkpoint {path}: missing weight shard {file}")
        with open_safetensors(file_path) as f:
            names = set(f.keys())
            if listed is not None:
                absent = sorted(set(listed) - names)
                if absent:
                    raise ValueError(
                        f"{file_path}: the index lists {absent[:3]} in this shard but it "
                        "does not hold them"
                    )
            for name in sorted(names):
                if name not in shapes:
                    raise ValueError(
                        f"{file_path}: unknown tensor {name!r} (not a parameter of this config)"
                    )
                if name in tensors:
                    raise ValueError(f"{file_path}: tensor {name!r} appears in two shards")
                tensor = f.get_tensor(name)
                if tuple(tensor.shape) != shapes[name]:
                    raise ValueError(
                        f"{file_path}: tensor {name!r} has shape {tuple(tensor.shape)}, the "
                        f"config needs {shapes[name]}"
                    )
                tensors[name] = tensor
    missing = [name for name in shapes if name not in tensors]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ValueError(f"checkpoint {path}: missing tensors {missing[:3]}{more}")
    return tensors


def load_checkpoint(
    path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, backend: str = "auto"
) -> LLaDAModel:
    """The model stored in the LLaDA checkpoint directory `path` (tokenizer too if present)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    config = read_config(path)
    state = read_state_dict(path, config)
    from .tokenizer import load_hf_tokenizer  # one reader for every architecture

    tokenizer = load_hf_tokenizer(os.path.join(path, TOKENIZER_FILE))
    with torch.device("meta"):
        model = LLaDAModel(config, backend=backend, tokenizer=tokenizer)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True)
    return model.eval()


def _atomic_write(path: str, write) -> None:
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates 0600; give the file the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_checkpoint(
    model: LLaDAModel,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int | None = None,
) -> None:
    """Write `model` as a LLaDA checkpoint directory (atomically, file by file).

    `dtype` converts the stored tensors (default: as they are). With `max_shard_bytes`, the
    weights are split into ``model-0000i-of-0000n.safetensors`` shards plus an index file.
    """
    from safetensors.torch import save_file

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    state = {
        k: (v.detach().to(dtype) if dtype else v.detach()).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    expected = expected_shapes(model.config)
    if set(state) != set(expected):
        raise ValueError(
            f"model state dict names differ from LLaDA's: {set(state) ^ set(expected)}"
        )

    def write_json(data):
        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.write("\n")

        return write

    _atomic_write(os.path.join(path, CONFIG_FILE), write_json(model.config.to_dict()))
    if max_shard_bytes is None:
        _atomic_write(
            os.path.join(path, WEIGHTS_FILE),
            lambda tmp: save_file(state, tmp, metadata={"format": "pt"}),
        )
    else:
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for name in expected:
            nbytes = state[name].numel() * state[name].element_size()
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][name] = state[name]
            size += nbytes
        weight_map = {}
        for i, shard in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _atomic_write(
                os.path.join(path, file),
                lambda tmp, shard=shard: save_file(shard, tmp, metadata={"format": "pt"}),
            )
            weight_map.update({name: file for name in shard})
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        _atomic_write(os.path.join(path, INDEX_FILE), write_json(index))
    if model.tokenizer is not None:
        _atomic_write(os.path.join(path, TOKENIZER_FILE), model.tokenizer.save)
