"""The Qwen-family transformer that Dream and SDAR share (docs/MODELS.md): `QwenConfig` (Hugging
Face Qwen2 / Qwen3 ``config.json`` keys), the blocks under Hugging Face names, `QwenModel`, and
the checkpoint loader (`load_qwen_checkpoint`).

`QwenModel` reuses the LLaDA model's forward, KV cache and cached forward
(`spiffy_triton.models.llada`): only the modules (under Qwen names) and the block's
``qkv`` / ``finish`` differ. Dream (`spiffy_triton.models.dream`) is this model with shifted
logits; SDAR (`spiffy_triton.models.sdar`) with q/k norms and block-causal attention.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import check_compatible_values, check_positive_ints, config_from_keys
from .llada import LLaDAModel, RMSNorm, apply_rope
from .tokenizer import load_hf_tokenizer

# config.json keys describing something this implementation does not do, and the values that
# are compatible with it.
_COMPATIBLE_VALUES = {
    "hidden_act": ("silu",),
    "rope_scaling": (None,),
    "use_sliding_window": (False, None),
    "attention_dropout": (0.0, 0, None),
}
# Architectures whose blocks carry per-head RMSNorms on queries and keys (Qwen3 family).
_QK_NORM_TYPES = ("sdar", "qwen3")
_ARCHITECTURE_NAMES = {"dream": "DreamModel", "sdar": "SDARForCausalLM"}


@dataclass
class QwenConfig:
    """The architecture of a Qwen2 / Qwen3-style checkpoint (Dream, SDAR), read from and written
    to Hugging Face ``config.json`` keys. Unknown keys are kept in `extra`.

    ``model_type`` picks the block: Qwen3-style (``"sdar"``, ``"qwen3"``) have q/k norms and no
    q/k/v/o bias unless ``attention_bias`` (then all four projections carry one, as in Qwen3);
    Qwen2-style (``"Dream"``, ``"qwen2"``) always have the q/k/v bias (Qwen2 hard-codes it) and
    no o bias. ``block_size`` is SDAR's training block size (optional).
    """

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    attention_bias: bool | None = None
    mask_token_id: int | None = None
    eos_token_id: int | list | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    block_size: int | None = None
    model_type: str = "Dream"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        check_positive_ints(
            self,
            (
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
                "vocab_size",
                "max_position_embeddings",
            ),
        )
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"config hidden_size ({self.hidden_size}) must be divisible by "
                    f"num_attention_heads ({self.num_attention_heads}) when head_dim is not given"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if not isinstance(self.head_dim, int) or self.head_dim <= 0 or self.head_dim % 2:
            raise ValueError(
                f"config head_dim must be a positive even integer, got {self.head_dim!r}"
            )
        kv = self.num_key_value_heads
        if not isinstance(kv, int) or kv <= 0 or self.num_attention_heads % kv:
            raise ValueError(
                f"config num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({kv})"
            )
        if not self.rope_theta > 0:
            raise ValueError(f"config rope_theta must be > 0, got {self.rope_theta}")
        if self.attention_bias is None:
            self.attention_bias = not self.qk_norm
        if not self.qk_norm and not self.attention_bias:
            raise ValueError(
                f"config model_type {self.model_type!r} is Qwen2-style, whose q/k/v projections "
                "always carry a bias; attention_bias=false is not a Qwen2 checkpoint"
            )
        for name in ("mask_token_id", "pad_token_id", "bos_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"config {name} ({value}) outside the vocabulary [0, {self.vocab_size})"
                )
        block = self.block_size
        if block is not None and (type(block) is not int or block < 1):
            raise ValueError(f"config block_size must be a positive integer, got {block!r}")
        check_compatible_values(self.extra, _COMPATIBLE_VALUES, "this implementation")

    # Names the LLaDA machinery (and the decoder) reads.
    @property
    def embedding_size(self) -> int:
        return self.vocab_size

    @property
    def max_sequence_length(self) -> int:
        return self.max_position_embeddings

    @property
    def n_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def qk_norm(self) -> bool:
        return self.model_type.lower() in _QK_NORM_TYPES

    @property
    def o_proj_bias(self) -> bool:
        """Whether o_proj carries a bias: Qwen3's ``attention_bias`` covers q/k/v *and* o
        (transformers' Qwen3Attention); Qwen2 / Dream never have one."""
        return bool(self.qk_norm and self.attention_bias)

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "config") -> QwenConfig:
        """Build from a Hugging Face ``config.json`` dict (``rope_theta`` at the top level, or
        in transformers 5's ``rope_parameters``)."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        data = dict(data)
        required = (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "vocab_size",
        )
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"{source}: missing required config keys {missing}")
        rope = data.pop("rope_parameters", None)
        if rope is not None:
            if rope.get("rope_type", "default") != "default":
                raise ValueError(
                    f"{source}: rope_parameters.rope_type={rope.get('rope_type')!r} is not "
                    "supported (only 'default' RoPE)"
                )
            if "rope_theta" in rope:
                data.setdefault("rope_theta", rope["rope_theta"])
        return config_from_keys(cls, data, source)

    def to_dict(self) -> dict:
        out = dict(self.extra)
        for f in fields(self):
            if f.name != "extra" and getattr(self, f.name) is not None:
                out[f.name] = getattr(self, f.name)
        name = _ARCHITECTURE_NAMES.get(self.model_type.lower())
        if name:
            out.setdefault("architectures", [name])
        out.setdefault("hidden_act", "silu")
        return out

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter name of the checkpoint (Hugging Face Qwen2 / Qwen3 names) and its
        shape."""
        d, hd, m = self.hidden_size, self.head_dim, self.intermediate_size
        nq, nkv = self.num_attention_heads * hd, self.num_key_value_heads * hd
        shapes = {"model.embed_tokens.weight": (self.vocab_size, d)}
        for i in range(self.num_hidden_layers):
            p = f"model.layers.{i}."
            shapes[p + "self_attn.q_proj.weight"] = (nq, d)
            shapes[p + "self_attn.k_proj.weight"] = (nkv, d)
            shapes[p + "self_attn.v_proj.weight"] = (nkv, d)
            if self.attention_bias:
                shapes[p + "self_attn.q_proj.bias"] = (nq,)
                shapes[p + "self_attn.k_proj.bias"] = (nkv,)
                shapes[p + "self_attn.v_proj.bias"] = (nkv,)
            shapes[p + "self_attn.o_proj.weight"] = (d, nq)
            if self.o_proj_bias:
                shapes[p + "self_attn.o_proj.bias"] = (d,)
            if self.qk_norm:
                shapes[p + "self_attn.q_norm.weight"] = (hd,)
                shapes[p + "self_attn.k_norm.weight"] = (hd,)
            shapes[p + "mlp.gate_proj.weight"] = (m, d)
            shapes[p + "mlp.up_proj.weight"] = (m, d)
            shapes[p + "mlp.down_proj.weight"] = (d, m)
            shapes[p + "input_layernorm.weight"] = (d,)
            shapes[p + "post_attention_layernorm.weight"] = (d,)
        shapes["model.norm.weight"] = (d,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, d)
        return shapes


# ---------------------------------------------------------------------------------- modules


class QwenAttention(nn.Module):
    def __init__(self, config: QwenConfig):
        super().__init__()
        d, hd = config.hidden_size, config.head_dim
        nq, nkv = config.num_attention_heads * hd, config.num_key_value_heads * hd
        self.q_proj = nn.Linear(d, nq, bias=config.attention_bias)
        self.k_proj = nn.Linear(d, nkv, bias=config.attention_bias)
        self.v_proj = nn.Linear(d, nkv, bias=config.attention_bias)
        self.o_proj = nn.Linear(nq, d, bias=config.o_proj_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(hd, config.rms_norm_eps)
            self.k_norm = RMSNorm(hd, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None


class QwenMLP(nn.Module):
    def __init__(self, config: QwenConfig):
        super().__init__()
        d, m = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, m, bias=False)
        self.up_proj = nn.Linear(d, m, bias=False)
        self.down_proj = nn.Linear(m, d, bias=False)


class QwenBlock(nn.Module):
    """One Qwen2 / Qwen3 decoder layer under Hugging Face names, with the LLaDA block's
    interface (``qkv`` then ``finish``) so that LLaDA's forward and cache drive it."""

    def __init__(self, config: QwenConfig):
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.self_attn = QwenAttention(config)
        self.mlp = QwenMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Rotated queries, keys and values ``[B, H, T, head_dim]`` of hidden states `x`."""
        b, t, _ = x.shape
        attn = self.self_attn
        h = self.input_layernorm(x)
        q = attn.q_proj(h).view(b, t, self.n_heads, self.head_dim)
        k = attn.k_proj(h).view(b, t, self.n_kv_heads, self.head_dim)
        v = attn.v_proj(h).view(b, t, self.n_kv_heads, self.head_dim)
        if attn.q_norm is not None:  # Qwen3: per-head RMSNorm before RoPE
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Residual add of the attention output `attn` ``[B, H, T, d]``, then the SwiGLU MLP."""
        b, _, t, _ = attn.shape
        x = x + self.self_attn.o_proj(attn.transpose(1, 2).reshape(b, t, -1))
        h = self.post_attention_layernorm(x)
        mlp = self.mlp
        return x + mlp.down_proj(F.silu(mlp.gate_proj(h)) * mlp.up_proj(h))


class _QwenBody(nn.Module):
    def __init__(self, config: QwenConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(QwenBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class _Parts(NamedTuple):
    """The modules LLaDA's forward reads, under LLaDA's roles."""

    wte: nn.Module
    blocks: nn.ModuleList
    ln_f: nn.Module
    ff_out: object


class QwenModel(LLaDAModel):
    """A Qwen2 / Qwen3-style transformer run by LLaDA's forward, cache and cached forward.

    ``model(ids, position_ids=None, layout=None, cache=None)`` -> logits ``[B, T, vocab]``
    (unshifted: row ``i`` is the LM head at position ``i``); ``prefill`` as LLaDA's.
    """

    config: QwenConfig

    def _build(self, config: QwenConfig) -> None:
        if not isinstance(config, QwenConfig):
            raise ValueError(f"config must be a QwenConfig, got {type(config).__name__}")
        self.model = _QwenBody(config)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )

    @property
    def transformer(self) -> _Parts:
        return _Parts(self.model.embed_tokens, self.model.layers, self.model.norm, self._head)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, weight)

    def init_weights(self, seed: int = 0, std: float = 0.02) -> QwenModel:
        """Normal(0, std) init (biases and norm weights included, so that tests exercise them);
        output projections scaled by 1/sqrt(2 * n_layers)."""
        gen = torch.Generator().manual_seed(seed)
        out_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("norm.weight"):
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float32))
                    continue
                s = out_std if name.endswith(("o_proj.weight", "down_proj.weight")) else std
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * s)
        return self


def load_qwen_checkpoint(path, model_class, *, dtype=torch.float32, backend="auto"):
    """A `QwenModel` subclass from a checkpoint directory (weights checked by name and shape,
    with the LLaDA checkpoint reader)."""
    from .checkpoint import CONFIG_FILE, TOKENIZER_FILE, read_state_dict

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    config = read_qwen_config(path)
    if config.mask_token_id is None:
        raise ValueError(
            f"{os.path.join(path, CONFIG_FILE)}: mask_token_id is missing; a diffusion decoder "
            "needs the mask token's id in config.json"
        )
    state = read_state_dict(path, config)
    with torch.device("meta"):
        model = model_class(config, backend=backend, tokenizer=None)
    # Fresh (aligned) storage: tensors read from a shard can sit at unaligned offsets, where BLAS
    # takes other kernels and the logits differ in the last bits from the saved model's.
    aligned = {k: torch.empty(v.shape, dtype=dtype).copy_(v) for k, v in state.items()}
    model.load_state_dict(aligned, assign=True)
    model.tokenizer = load_hf_tokenizer(os.path.join(path, TOKENIZER_FILE))
    return model.eval()


def read_qwen_config(path: str | os.PathLike) -> QwenConfig:
    from .checkpoint import read_config_as

    return read_config_as(path, QwenConfig)
