"""A LLaDA-compatible bidirectional transformer (docs/DESIGN.md §5).

LLaMA-style blocks (RMSNorm, SwiGLU, RoPE with configurable theta, optional GQA) without a
causal mask, under LLaDA's parameter names, so that a LLaDA checkpoint's state dict loads
as is. Three ways to run it (docs/ARCHITECTURE.md, "Model"):

- ``model(ids)``: full bidirectional attention over the sequence (the training path; uses
  torch's SDPA);
- ``model(ids, position_ids=..., layout=layout)``: query rows = key rows = ``ids``, attention
  restricted by a `SegmentLayout` through `spiffy_triton.dispatch.graph_attention` (e.g. the
  packed Spiffy verification layout, where draft copies reuse the block's position ids);
- ``model(ids, position_ids=..., layout=..., cache=cache)``: ``ids`` are query rows only,
  keys come from a frozen `KVCache` (from `prefill`) plus the fresh rows.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..dispatch import BACKENDS, graph_attention
from ..layout import SegmentLayout
from ..ops import graph_attention_op
from .cache import CACHE_MODES, KVCache, LayerKV
from .config import LLaDAConfig


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Norms and RoPE run in at least float32 (as LLaDA does); float64 stays float64.
    return torch.float64 if dtype == torch.float64 else torch.float32


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(_compute_dtype(x.dtype))
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin ``[B, 1, T, head_dim]`` for integer `position_ids` ``[B, T]``."""
    cdt = _compute_dtype(dtype)
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=cdt) / head_dim)
    )
    freqs = position_ids.to(cdt)[..., None] * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)[:, None]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    xf = x.to(cos.dtype)
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


class LLaDABlock(nn.Module):
    """One LLaMA-style block; attribute names are LLaDA's (``blocks.{i}.q_proj`` ...)."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        d, hd = config.d_model, config.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, hd
        self.attn_norm = RMSNorm(d, config.rms_norm_eps)
        self.ff_norm = RMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, config.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, config.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, config.n_kv_heads * hd, bias=False)
        self.attn_out = nn.Linear(config.n_heads * hd, d, bias=False)
        self.ff_proj = nn.Linear(d, config.mlp_hidden_size, bias=False)  # gate
        self.up_proj = nn.Linear(d, config.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(config.mlp_hidden_size, d, bias=False)  # down

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Rotated queries, keys and values ``[B, H, T, head_dim]`` of hidden states `x`."""
        b, t, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Residual add of the attention output `attn` ``[B, H, T, d]``, then the SwiGLU MLP."""
        b, _, t, _ = attn.shape
        x = x + self.attn_out(attn.transpose(1, 2).reshape(b, t, -1))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class _Transformer(nn.Module):
    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.wte = nn.Embedding(config.embedding_size, config.d_model)
        self.blocks = nn.ModuleList(LLaDABlock(config) for _ in range(config.n_layers))
        self.ln_f = RMSNorm(config.d_model, config.rms_norm_eps)
        self.ff_out = nn.Linear(config.d_model, config.embedding_size, bias=False)


class _Wrapper(nn.Module):
    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.transformer = _Transformer(config)


def default_cached_layout(cache: KVCache, num_extra_rows: int):
    """Layout of a cached forward given no explicit one: the extra rows are whole copies of the
    real rows (drafts); each copy sees the cached keys and itself, in the real rows' slot.

    For a dual cache this is exactly `SegmentLayout.spiffy(..., cached=True)`. For a prefix
    cache the copies hold block + suffix, so each copy is evaluated exactly as if it were the
    real sequence (its suffix rows see the copy's block, not the root's).
    """
    real = cache.real_rows
    if num_extra_rows % real:
        raise ValueError(
            f"without a layout, the {num_extra_rows} extra rows must be whole copies of the "
            f"{real} real rows; pass a layout for anything else"
        )
    return _spiffy_layout(cache.prefix_len, real, cache.suffix_len, num_extra_rows // real)


@functools.lru_cache(maxsize=256)
def _spiffy_layout(prefix_len: int, real_rows: int, suffix_len: int, num_copies: int):
    # Cached so that the layout's tile schedule is computed once per shape.
    return SegmentLayout.spiffy(prefix_len, real_rows, suffix_len, num_copies, cached=True)


class LLaDAModel(nn.Module):
    """LLaDA-compatible masked-diffusion transformer (see the module docstring)."""

    def __init__(self, config: LLaDAConfig, *, backend: str = "auto", tokenizer=None):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.config = config
        self.backend = backend
        self.tokenizer = tokenizer
        self._build(config)

    def _build(self, config) -> None:
        # Subclasses (Dream, SDAR: models/dream.py, models/sdar.py) build their own modules under
        # their checkpoint's names and expose them through `transformer`.
        self.model = _Wrapper(config)

    # ------------------------------------------------------------------ helpers

    @property
    def transformer(self) -> _Transformer:
        return self.model.transformer

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.wte.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.wte.weight.device

    def init_weights(self, seed: int = 0, std: float | None = None) -> LLaDAModel:
        """Random init from `seed`: norms 1, embedding N(0, 1), every matrix N(0, 1 / fan_in)
        (so attention scores start position-dependent: with a small uniform std such as 0.02
        a RoPE-only model sits for long on a bag-of-characters plateau). With `std`, every
        matrix is N(0, std^2) instead (tests use it for peaked random models)."""
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 1:
                    p.fill_(1.0)
                    continue
                if std is not None:
                    scale = std
                elif name.endswith("wte.weight"):
                    scale = 1.0
                else:
                    scale = p.shape[1] ** -0.5
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * scale)
        return self

    def _check_ids(self, input_ids: torch.Tensor, name: str = "input_ids") -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else None
            raise ValueError(f"{name} must be a [B, T] integer tensor, got shape {shape}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name} must be int64 or int32, got {input_ids.dtype}")
        if input_ids.device != self.device:
            raise ValueError(f"{name} is on {input_ids.device}, the model on {self.device}")
        if input_ids.numel() and not torch.compiler.is_compiling():  # values: data-dependent
            lo, hi = int(input_ids.min()), int(input_ids.max())
            if lo < 0 or hi >= self.config.embedding_size:
                raise ValueError(
                    f"{name} has ids in [{lo}, {hi}], outside [0, {self.config.embedding_size})"
                )

    def _position_ids(self, position_ids, batch: int, length: int) -> torch.Tensor:
        if position_ids is None:
            return torch.arange(length, device=self.device).expand(batch, length)
        if not isinstance(position_ids, torch.Tensor) or position_ids.dtype.is_floating_point:
            raise ValueError("position_ids must be an integer tensor [T] or [B, T]")
        if position_ids.dim() == 1:
            position_ids = position_ids[None]
        if position_ids.dim() != 2 or position_ids.shape[-1] != length:
            raise ValueError(
                f"position_ids must have shape [{length}] or [{batch}, {length}], "
                f"got {tuple(position_ids.shape)}"
            )
        if position_ids.shape[0] not in (1, batch):
            raise ValueError(
                f"position_ids batch {position_ids.shape[0]} does not match input_ids ({batch})"
            )
        if (
            position_ids.numel()
            and not torch.compiler.is_compiling()
            and int(position_ids.min()) < 0
        ):
            raise ValueError("position_ids must be >= 0")
        return position_ids.to(self.device).expand(batch, length)

    def _attention(self, q, k, v, layout):
        scale = 1.0 / math.sqrt(self.config.head_dim)
        if layout is None:
            return F.scaled_dot_product_attention(
                q, k, v, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
            )
        if torch.compiler.is_compiling():  # one opaque node of the graph (spiffy_triton/ops.py)
            return graph_attention_op(q, k, v, layout, scale=scale, backend=self.backend)
        return graph_attention(q, k, v, layout, scale=scale, backend=self.backend)

    def _check_layout(self, layout, num_q: int, num_k: int) -> None:
        if layout.num_q_rows != num_q or layout.num_k_rows != num_k:
            raise ValueError(
                f"layout has {layout.num_q_rows} query rows and {layout.num_k_rows} key rows, "
                f"the forward needs {num_q} and {num_k}"
            )

    # ------------------------------------------------------------------ forward

    def forward(self, input_ids, position_ids=None, layout=None, cache=None):
        """Logits ``[B, T, embedding_size]`` (see the module docstring for the three modes)."""
        self._check_ids(input_ids)
        if cache is not None:
            return self._forward_cached(input_ids, position_ids, layout, cache)
        b, t = input_ids.shape
        if layout is not None:
            self._check_layout(layout, t, t)
        pos = self._position_ids(position_ids, b, t)
        x = self.transformer.wte(input_ids)
        cos, sin = rope_cos_sin(pos, self.config.head_dim, self.config.rope_theta, x.dtype)
        for block in self.transformer.blocks:
            q, k, v = block.qkv(x, cos, sin)
            x = block.finish(x, self._attention(q, k, v, layout))
        return self.transformer.ff_out(self.transformer.ln_f(x))

    @torch.no_grad()
    def prefill(
        self,
        input_ids: torch.Tensor,
        *,
        block_start: int,
        block_end: int,
        mode: str = "dual",
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """One full bidirectional forward; returns its logits and the frozen `KVCache` of the
        context of block ``[block_start, block_end)`` (prefix, or prefix and suffix)."""
        self._check_ids(input_ids)
        if mode not in CACHE_MODES:
            raise ValueError(f"mode must be one of {CACHE_MODES}, got {mode!r}")
        b, t = input_ids.shape
        if not (0 <= block_start < block_end <= t):
            raise ValueError(
                f"need 0 <= block_start < block_end <= T={t}, got block_start={block_start}, "
                f"block_end={block_end}"
            )
        pos = self._position_ids(position_ids, b, t)
        x = self.transformer.wte(input_ids)
        cos, sin = rope_cos_sin(pos, self.config.head_dim, self.config.rope_theta, x.dtype)
        layers = []
        for block in self.transformer.blocks:
            q, k, v = block.qkv(x, cos, sin)
            dual = mode == "dual"
            layers.append(
                LayerKV(
                    prefix_k=k[:, :, :block_start].contiguous(),
                    prefix_v=v[:, :, :block_start].contiguous(),
                    suffix_k=k[:, :, block_end:].contiguous() if dual else None,
                    suffix_v=v[:, :, block_end:].contiguous() if dual else None,
                )
            )
            x = block.finish(x, self._attention(q, k, v, None))
        logits = self.transformer.ff_out(self.transformer.ln_f(x))
        return logits, KVCache(mode, block_start, block_end, t, tuple(layers))

    def _forward_cached(self, input_ids, position_ids, layout, cache):
        if not isinstance(cache, KVCache):
            raise ValueError(f"cache must be a KVCache from prefill, got {type(cache).__name__}")
        if position_ids is None:
            raise ValueError(
                "position_ids are required with a cache (real rows start at the block start "
                f"{cache.block_start}; drafts reuse the block's positions)"
            )
        b, n_q = input_ids.shape
        real = cache.real_rows
        if n_q < real:
            raise ValueError(
                f"input_ids has {n_q} query rows; a {cache.mode} cache needs the {real} real "
                "rows first (then any extra rows)"
            )
        if cache.batch_size not in (1, b):
            raise ValueError(f"cache batch {cache.batch_size} does not match input_ids ({b})")
        n_extra = n_q - real
        n_k = cache.prefix_len + real + cache.suffix_len + n_extra
        if layout is None:
            layout = default_cached_layout(cache, n_extra)
        self._check_layout(layout, n_q, n_k)
        pos = self._position_ids(position_ids, b, n_q)
        x = self.transformer.wte(input_ids)
        cos, sin = rope_cos_sin(pos, self.config.head_dim, self.config.rope_theta, x.dtype)
        for block, kv in zip(self.transformer.blocks, cache.layers):
            q, k, v = block.qkv(x, cos, sin)
            # Key order of the contract: [cached prefix, fresh real, cached suffix, fresh extra].
            keys = [kv.prefix_k.expand(b, -1, -1, -1), k[:, :, :real]]
            values = [kv.prefix_v.expand(b, -1, -1, -1), v[:, :, :real]]
            if kv.suffix_k is not None:
                keys.append(kv.suffix_k.expand(b, -1, -1, -1))
                values.append(kv.suffix_v.expand(b, -1, -1, -1))
            keys.append(k[:, :, real:])
            values.append(v[:, :, real:])
            attn = self._attention(q, torch.cat(keys, dim=2), torch.cat(values, dim=2), layout)
            x = block.finish(x, attn)
        return self.transformer.ff_out(self.transformer.ln_f(x))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
