"""Models: the LLaDA-compatible transformer, its KV cache, checkpoint I/O, the tokenizer of
the bundled model, and `load_model`."""

from __future__ import annotations

import os

import torch

from ..types import Backend
from .cache import CACHE_MODES, KVCache, LayerKV
from .checkpoint import expected_shapes, load_checkpoint, read_config, save_checkpoint
from .config import LLaDAConfig, llada_8b_config
from .dream import DreamModel, dream_7b_config, load_dream
from .llada import LLaDAModel
from .qwen import QwenConfig
from .sdar import SDARModel, load_sdar, sdar_1_7b_config
from .tokenizer import CharTokenizer

_ASSETS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets")
# The bundled trained models: LLaDA-style (bidirectional) and SDAR-style (block-causal).
BUNDLED_MODELS = {
    "tiny": os.path.join(_ASSETS, "tiny"),
    "tiny-sdar": os.path.join(_ASSETS, "tiny-sdar"),
}

__all__ = [
    "BUNDLED_MODELS",
    "CACHE_MODES",
    "CharTokenizer",
    "DreamModel",
    "KVCache",
    "LLaDAConfig",
    "LLaDAModel",
    "LayerKV",
    "QwenConfig",
    "SDARModel",
    "dream_7b_config",
    "expected_shapes",
    "llada_8b_config",
    "load_checkpoint",
    "load_dream",
    "load_model",
    "load_sdar",
    "model_architecture",
    "read_config",
    "save_checkpoint",
    "sdar_1_7b_config",
]

# Architectures `load_model` reads, by config.json's model_type (lower case).
ARCHITECTURES = ("llada", "dream", "sdar")


def model_architecture(path: str | os.PathLike) -> str:
    """``"llada"``, ``"dream"`` or ``"sdar"``: the architecture of the checkpoint directory
    `path`, from config.json's ``model_type`` or ``architectures`` (LLaDA when it names
    neither: LLaDA checkpoints written before model_type existed)."""
    import json

    config_path = os.path.join(os.fspath(path), "config.json")
    if not os.path.isfile(config_path):
        return "llada"  # the LLaDA loader reports the missing file
    with open(config_path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{config_path}: not valid JSON ({error})") from None
    model_type = str(data.get("model_type") or "").lower()
    names = " ".join(str(a) for a in data.get("architectures") or ()).lower()
    for arch in ("dream", "sdar"):
        if model_type == arch or arch in names:
            return arch
    if model_type in ("", "llada") or "llada" in names:
        return "llada"
    raise ValueError(
        f"{config_path}: model_type {data.get('model_type')!r} is not one of {ARCHITECTURES}; "
        "for another Hugging Face dLLM use spiffy_triton.models.hf_adapter.HFDiffusionModel"
    )


def load_model(
    name_or_path: str | os.PathLike = "tiny",
    *,
    dtype: torch.dtype = torch.float32,
    backend: Backend = "auto",
    device: str | torch.device = "cpu",
) -> LLaDAModel:
    """A bundled trained model by name (``"tiny"``, ``"tiny-sdar"``), or a LLaDA, Dream or
    SDAR checkpoint directory (picked by config.json's ``model_type``,
    `model_architecture`).

    The model is in eval mode, on `device`, in `dtype`, and runs its attention kernels
    through `backend` ("auto", "triton" or "torch"). ``model.tokenizer`` is the tokenizer
    stored with the checkpoint (None if the directory has no ``tokenizer.json``).
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    name = os.fspath(name_or_path)
    if name in BUNDLED_MODELS:
        path = BUNDLED_MODELS[name]
        if not os.path.isfile(os.path.join(path, "model.safetensors")):
            raise FileNotFoundError(
                f"the bundled model {name!r} is missing from {path}; train it with "
                "`python -m spiffy_triton.training.train_tiny` (`--arch sdar` for tiny-sdar; or "
                "restore the file from git)"
            )
    else:
        path = name
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"name_or_path must be one of {sorted(BUNDLED_MODELS)} or a LLaDA checkpoint "
                f"directory; {name!r} is neither"
            )
    loader = {"llada": load_checkpoint, "dream": load_dream, "sdar": load_sdar}
    model = loader[model_architecture(path)](path, dtype=dtype, backend=backend)
    return model.to(device)
