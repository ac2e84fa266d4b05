"""SDAR-style block-causal diffusion model and its verifier (docs/MODELS.md).

SDAR (JetAstra/SDAR) is a Qwen3 transformer (q/k per-head RMSNorm, no q/k/v bias, GQA, RoPE)
trained to denoise one block at a time: attention is bidirectional inside a block and causal
across blocks, and a block's keys and values are committed to the KV cache once the block is
finished. Nothing before a block sees the block, so the context's hidden states do not depend
on it: a draft that sees the committed context and itself gets exactly the logits vanilla
computes for that state. Packed verification is therefore exact here, with or without cache
(`BlockCausalVerifier`).

Blocks. ``generate`` decodes blocks of ``block_length`` starting at the prompt's end. The
context before the first generated block (the prompt) is cut into chunks of ``block_length``
from position 0 (SDAR's prefill), the last chunk shorter when the prompt length is not a
multiple of it; then every generated block is one chunk. (SDAR's own generate instead decodes
the prompt's last partial chunk inside the first generated block; the two agree when the
prompt length is a multiple of ``block_length``.)
"""

from __future__ import annotations

import functools
import os

import torch

from ..layout import FULL, NONE, SegmentLayout
from ..types import VERIFY_MODES
from ..verify_inputs import verify_inputs
from .cache import KVCache, LayerKV
from .llada import rope_cos_sin
from .qwen import QwenConfig, QwenModel, load_qwen_checkpoint
from .verifier import check_model_has_cache


def sdar_1_7b_config() -> QwenConfig:
    """The architecture of SDAR-1.7B-Chat (Qwen3-1.7B layout), for name and shape checks."""
    return QwenConfig(
        hidden_size=2048,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=6144,
        vocab_size=151936,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        model_type="sdar",
    )


def _chunk_lengths(start: int, end: int, size: int) -> tuple[int, ...]:
    """``[start, end)`` cut into chunks of `size` from `start` (the last one shorter)."""
    full, rest = divmod(end - start, size)
    return (size,) * full + ((rest,) if rest else ())


@functools.lru_cache(maxsize=256)
def block_causal_layout(
    committed: int, chunks: tuple[int, ...], num_drafts: int = 0
) -> SegmentLayout:
    """Block-causal attention over `chunks` (query rows) after `committed` cached keys, with
    `num_drafts` copies of the last chunk packed after it.

    Keys are ``[committed, chunk_1 .. chunk_m, draft_1 .. draft_D]``: chunk ``i`` sees the
    committed keys and chunks ``1..i``; draft ``j`` sees the committed keys, chunks
    ``1..m-1`` and itself (never the last chunk it replaces), visited in that chunk's slot.
    """
    m, d = len(chunks), num_drafts
    visibility = []
    for i in range(m):
        visibility.append([FULL] + [FULL if j <= i else NONE for j in range(m)] + [NONE] * d)
    for k in range(d):
        row = [FULL] + [FULL] * (m - 1) + [NONE] + [NONE] * d
        row[1 + m + k] = FULL
        visibility.append(row)
    q_lengths = chunks + (chunks[-1],) * d
    k_lengths = (committed,) + q_lengths
    key_order = tuple(range(m + 1)) + (m,) * d
    return SegmentLayout(q_lengths, k_lengths, visibility, key_order=key_order)


class SDARModel(QwenModel):
    """SDAR-compatible block-causal diffusion model (see the module docstring).

    ``model(ids, position_ids=None, layout=None)``: without a layout, block-causal attention in
    chunks of ``config.block_size`` from position 0 (SDAR's training layout).
    ``prefill(ids, block_start=s, block_end=e, cache=committed)``: SDAR's per-block KV commit.
    """

    @property
    def trained_block_size(self) -> int | None:
        """The block size the model was trained with (config ``block_size``): `generate`'s
        default block_length; other lengths warn."""
        return self.config.block_size

    def default_layout(self, length: int) -> SegmentLayout:
        if self.config.block_size is None:
            raise ValueError(
                "SDAR attention is block-causal: pass layout= (e.g. SegmentLayout.block_causal) "
                "or set block_size in the config"
            )
        return block_causal_layout(0, _chunk_lengths(0, length, self.config.block_size))

    def forward(self, input_ids, position_ids=None, layout=None, cache=None):
        if layout is None and cache is None:
            self._check_ids(input_ids)
            layout = self.default_layout(input_ids.shape[1])
        return super().forward(input_ids, position_ids=position_ids, layout=layout, cache=cache)

    @torch.no_grad()
    def prefill(
        self,
        input_ids: torch.Tensor,
        *,
        block_start: int,
        block_end: int,
        mode: str = "prefix",
        cache: KVCache | None = None,
        chunk_lengths: tuple[int, ...] | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """Commit the keys before the block and return the block's logits.

        Rows ``[c, block_end)`` of `input_ids` are computed, where ``c`` is the end of the
        already committed `cache` (0 without one): ``[c, block_start)`` in block-causal
        `chunk_lengths` (default: chunks of the block's length), then the block. Returns the
        block's logits ``[B, block_end - block_start, V]`` and the cache of
        ``[0, block_start)`` (a ``"prefix"`` `KVCache` whose real rows are the block), which
        cached forwards of the block and its drafts read.
        """
        self._check_ids(input_ids)
        if mode != "prefix":
            raise ValueError(
                f"mode must be 'prefix' for SDAR, got {mode!r}: attention is causal across "
                "blocks, so nothing after the block is visible and there is no suffix to cache"
            )
        b, t = input_ids.shape
        if not 0 <= block_start < block_end <= t:
            raise ValueError(
                f"need 0 <= block_start < block_end <= T={t}, got block_start={block_start}, "
                f"block_end={block_end}"
            )
        committed = 0 if cache is None else cache.block_start
        if cache is not None and not isinstance(cache, KVCache):
            raise ValueError(f"cache must be a KVCache from prefill, got {type(cache).__name__}")
        if committed > block_start:
            raise ValueError(f"cache holds keys up to {committed}, past block_start={block_start}")
        if chunk_lengths is None:
            chunk_lengths = _chunk_lengths(committed, block_start, block_end - block_start)
        chunk_lengths = tuple(chunk_lengths)
        if sum(chunk_lengths) != block_start - committed or any(c <= 0 for c in chunk_lengths):
            raise ValueError(
                f"chunk_lengths {chunk_lengths} must be positive and cover [{committed}, "
                f"{block_start})"
            )
        layout = block_causal_layout(committed, chunk_lengths + (block_end - block_start,))
        ids = input_ids[:, committed:block_end]
        pos = torch.arange(committed, block_end, device=self.device).expand(b, -1)
        x = self.transformer.wte(ids)
        cos, sin = rope_cos_sin(pos, self.config.head_dim, self.config.rope_theta, x.dtype)
        layers = []
        old_layers = cache.layers if cache is not None else (None,) * self.config.n_layers
        keep = block_start - committed
        for block, old in zip(self.transformer.blocks, old_layers):
            q, k, v = block.qkv(x, cos, sin)
            if old is not None:
                k = torch.cat([old.prefix_k.expand(b, -1, -1, -1), k], dim=2)
                v = torch.cat([old.prefix_v.expand(b, -1, -1, -1), v], dim=2)
            layers.append(
                LayerKV(
                    prefix_k=k[:, :, : committed + keep].contiguous(),
                    prefix_v=v[:, :, : committed + keep].contiguous(),
                    suffix_k=None,
                    suffix_v=None,
                )
            )
            x = block.finish(x, self._attention(q, k, v, layout))
        logits = self.transformer.ff_out(self.transformer.ln_f(x[:, keep:]))
        return logits, KVCache("prefix", block_start, block_end, block_end, tuple(layers))

    def spiffy_verifier(self, cache: str | None, verify: str | None) -> BlockCausalVerifier:
        """The decoder's hook (`spiffy_triton.decoding.generate`)."""
        return BlockCausalVerifier(self, cache, verify)


def load_sdar(
    path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, backend: str = "auto"
) -> SDARModel:
    """The SDAR model stored in a checkpoint directory (``config.json`` with SDAR's / Qwen3's
    keys plus ``mask_token_id``, safetensors under Hugging Face Qwen3 names)."""
    return load_qwen_checkpoint(path, SDARModel, dtype=dtype, backend=backend)


class BlockCausalVerifier:
    """The decoder's verifier (``generate``'s hook) for a block-causal model.

    - ``cache=None``: one forward over the context and the block (the masked future is not
      fed: nothing before it sees it), the context in block-causal chunks. ``verify="packed"``
      packs the drafts after the block; each sees the context and itself: exact, because no
      context row sees the block. ``"batch"``: each draft is another batch row: exact.
    - ``cache="prefix"``: SDAR's per-block KV commit. The first forward of a block commits the
      keys of the blocks finished since the last commit and gives the block's logits (one
      forward, no drafts); later forwards read the frozen cache. Packed or batch: exact.

    ``cache="dual"`` does not exist for a block-causal model (no suffix is visible).
    ``model`` needs ``model(ids, position_ids=, layout=)``, and for the cache SDAR's
    ``prefill`` and cached forward.
    """

    def __init__(self, model, cache: str | None, verify: str | None):
        if cache not in (None, "prefix"):
            raise ValueError(
                f"cache must be None or 'prefix' (the per-block KV commit) for a block-causal "
                f"model, got {cache!r}: nothing after the block is visible, so a 'dual' cache "
                "has no suffix to hold"
            )
        if verify is not None and verify not in VERIFY_MODES:
            raise ValueError(f"verify must be 'packed', 'batch' or None, got {verify!r}")
        check_model_has_cache(model, cache)
        self.model = model
        self.cache = cache
        self.verify = verify or "packed"
        self.exact = True
        self.clock = None  # the decoder's phase clock, set by generate
        self.kv = None
        self.prompt_length = None

    def _lap(self, phase: str) -> None:
        if self.clock is not None:
            self.clock.lap(phase)

    def _chunks(self, start: int, s: int, length: int) -> tuple[int, ...]:
        """Chunks of ``[start, s)`` (`start` is 0 or a block start): the prompt's from 0, then
        one per generated block."""
        if self.prompt_length is None:
            self.prompt_length = s  # generate's first block starts at the prompt's end
        p = self.prompt_length
        if start == 0:
            return _chunk_lengths(0, p, length) + _chunk_lengths(p, s, length)
        return _chunk_lengths(start, s, length)

    def prefill(self, x: torch.Tensor, s: int, e: int):
        """Block-start forward: commit the finished blocks, return the block's logits."""
        committed = 0 if self.kv is None else self.kv.block_start
        chunks = self._chunks(committed, s, e - s)
        logits, self.kv = self.model.prefill(
            x, block_start=s, block_end=e, cache=self.kv, chunk_lengths=chunks
        )
        self._lap("model")
        return logits[0], None

    def __call__(self, x: torch.Tensor, s: int, e: int, drafts: torch.Tensor):
        """Logits of the root block ``[L, V]``, of each draft ``[D, L, V]``, and no hint.

        Inputs from the one builder (`spiffy_triton.verify_inputs`) on the sequence cut at the
        block's end (nothing before the masked future sees it); without cache under the
        block-causal layout of the context's chunks; with the cache, real rows see
        ``[committed, block]`` and a draft ``[committed, itself]`` in the block's slot (the
        builder's `prefix_cache_layout` without a suffix)."""
        length = e - s
        chunks = self._chunks(0, s, length) + (length,) if self.cache is None else None
        inputs = verify_inputs(
            x[:, :e],
            s,
            e,
            drafts,
            self.cache,
            self.verify,
            uncached_layout=lambda d: block_causal_layout(0, chunks, d),
        )
        self._lap("layout")
        out = inputs.run(self.model, self.kv)
        self._lap("model")
        root, draft_logits, _ = inputs.split(out)  # the hint: the next block's rows, not fed
        return root, draft_logits, None
