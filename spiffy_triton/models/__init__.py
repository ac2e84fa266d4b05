"""Models: the LLaDA-compatible transformer, its KV cache, checkpoint I/O, the tokenizer of
the bundled model, and `load_model`."""

from __future__ import annotations

import os

import torch

from .cache import CACHE_MODES, KVCache, LayerKV
from .checkpoint import expected_shapes, load_checkpoint, read_config, save_checkpoint
from .config import LLaDAConfig, llada_8b_config
from .llada import LLaDAModel
from .tokenizer import CharTokenizer

BUNDLED_MODELS = {
    "tiny": os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "tiny"),
}

__all__ = [
    "BUNDLED_MODELS",
    "CACHE_MODES",
    "CharTokenizer",
    "KVCache",
    "LLaDAConfig",
    "LLaDAModel",
    "LayerKV",
    "expected_shapes",
    "llada_8b_config",
    "load_checkpoint",
    "load_model",
    "read_config",
    "save_checkpoint",
]


def load_model(
    name_or_path: str | os.PathLike = "tiny",
    *,
    dtype: torch.dtype = torch.float32,
    backend: str = "auto",
    device: str | torch.device = "cpu",
) -> LLaDAModel:
    """The bundled trained model by name (``"tiny"``), or a LLaDA checkpoint directory.

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
                "`python -m spiffy_triton.train_tiny` (or restore the file from git)"
            )
    else:
        path = name
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"name_or_path must be one of {sorted(BUNDLED_MODELS)} or a LLaDA checkpoint "
                f"directory; {name!r} is neither"
            )
    return load_checkpoint(path, dtype=dtype, backend=backend).to(device)
