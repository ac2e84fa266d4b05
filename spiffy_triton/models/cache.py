"""Frozen KV cache of a LLaDA-style model (Fast-dLLM's prefix and dual caches).

`LLaDAModel.prefill` runs one full forward and keeps, per layer, the rotated keys and the
values of the context outside the block being decoded:

- ``"prefix"``: the keys before the block, ``[0, s)``. Query rows of a cached forward are the
  block and everything after it (``T - s`` real rows), recomputed each step.
- ``"dual"``: the keys before the block and after it, ``[0, s)`` and ``[e, T)``, both frozen
  while the block is decoded. Query rows are the block only (``L = e - s`` real rows).

Extra query rows after the real rows (drafts) read the cache too. A forward never writes to
the cache, so any number of drafts, and the root, see the same context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..types import CACHE_MODES


@dataclass(frozen=True)
class LayerKV:
    """One layer's cached keys (after RoPE) and values, ``[B, Hkv, n, head_dim]``."""

    prefix_k: torch.Tensor
    prefix_v: torch.Tensor
    suffix_k: torch.Tensor | None
    suffix_v: torch.Tensor | None


@dataclass(frozen=True)
class KVCache:
    mode: str
    block_start: int
    block_end: int
    total_length: int
    layers: tuple[LayerKV, ...]

    def __post_init__(self):
        if self.mode not in CACHE_MODES:
            raise ValueError(f"cache mode must be one of {CACHE_MODES}, got {self.mode!r}")
        if not 0 <= self.block_start < self.block_end <= self.total_length:
            raise ValueError(
                "cache needs 0 <= block_start < block_end <= total_length, got "
                f"{self.block_start}, {self.block_end}, {self.total_length}"
            )

    @property
    def prefix_len(self) -> int:
        return self.block_start

    @property
    def block_len(self) -> int:
        return self.block_end - self.block_start

    @property
    def suffix_len(self) -> int:
        """Cached keys after the block (dual only; prefix mode recomputes them)."""
        return self.total_length - self.block_end if self.mode == "dual" else 0

    @property
    def real_rows(self) -> int:
        """How many leading query rows of a cached forward are the real sequence."""
        if self.mode == "dual":
            return self.block_len
        return self.total_length - self.block_start

    @property
    def batch_size(self) -> int:
        return self.layers[0].prefix_k.shape[0]

    def real_position_ids(self, device=None) -> torch.Tensor:
        """Position ids of the real query rows: ``[s, s + real_rows)``."""
        return torch.arange(self.block_start, self.block_start + self.real_rows, device=device)

    def num_bytes(self) -> int:
        total = 0
        for layer in self.layers:
            for t in (layer.prefix_k, layer.prefix_v, layer.suffix_k, layer.suffix_v):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total
