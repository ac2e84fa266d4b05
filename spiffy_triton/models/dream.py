"""Dream-compatible model (docs/MODELS.md).

Dream (Dream-org/Dream-v0-*-7B) is a Qwen2.5 transformer trained as a masked diffusion model:
bidirectional attention, Qwen2 blocks (RMSNorm, SwiGLU, RoPE with ``rope_theta`` from the
config, GQA, bias on the q/k/v projections), Hugging Face Qwen2 parameter names. It keeps the
autoregressive head's alignment: the token of position ``i`` is read from the logits of
position ``i - 1``. The model here returns the unshifted logits (row ``i`` = the LM head at
position ``i``, as Dream's own forward does); `BidirectionalVerifier`
(`spiffy_triton.models.verifier`) applies the shift when it verifies a block, so the row a block
position is read from belongs to the same state.

The Qwen blocks, config and checkpoint loader Dream shares with SDAR are in
`spiffy_triton.models.qwen`; the names below re-export them where they were first imported from.
"""

from __future__ import annotations

import os

import torch

from .qwen import QwenConfig, QwenModel, load_qwen_checkpoint, read_qwen_config
from .tokenizer import HFTokenizer, load_hf_tokenizer
from .verifier import BidirectionalVerifier, check_model_has_cache

__all__ = [
    "BidirectionalVerifier",
    "DreamModel",
    "HFTokenizer",
    "QwenConfig",
    "QwenModel",
    "check_model_has_cache",
    "dream_7b_config",
    "load_dream",
    "load_hf_tokenizer",
    "load_qwen_checkpoint",
    "read_qwen_config",
]


def dream_7b_config() -> QwenConfig:
    """The architecture of Dream-v0-7B (Qwen2.5-7B layout), for name and shape checks."""
    return QwenConfig(
        hidden_size=3584,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        intermediate_size=18944,
        vocab_size=152064,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=131072,
        tie_word_embeddings=False,
        mask_token_id=151666,
        eos_token_id=151643,
        pad_token_id=151643,
        bos_token_id=151643,
        model_type="Dream",
    )


class DreamModel(QwenModel):
    """Dream-compatible masked-diffusion model (see the module docstring).

    Its logits are shifted: the token of position ``i`` is read from row ``i - 1``
    (`token_logits`). `generate` verifies Dream through `spiffy_verifier`, which applies the
    shift.
    """

    logits_shift = 1

    @staticmethod
    def token_logits(logits: torch.Tensor) -> torch.Tensor:
        """Dream's alignment: row ``i`` of the result scores position ``i``'s token (row 0,
        which has no left neighbour, keeps its own logits, as Dream's generate does)."""
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)

    def spiffy_verifier(self, cache: str | None, verify: str | None) -> BidirectionalVerifier:
        """The decoder's hook (`spiffy_triton.decoding.generate`): verification with the shift."""
        return BidirectionalVerifier(self, cache, verify, shift=self.logits_shift)


def load_dream(
    path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, backend: str = "auto"
) -> DreamModel:
    """The Dream model stored in a checkpoint directory (``config.json`` with Dream's keys and
    safetensors under Hugging Face Qwen2 names, single file or sharded with an index)."""
    return load_qwen_checkpoint(path, DreamModel, dtype=dtype, backend=backend)
