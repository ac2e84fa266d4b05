"""Bring your own dLLM: Spiffy decoding of any `transformers` model that takes a 4-D
attention mask and position ids (docs/MODELS.md).

`HFDiffusionModel` wraps such a model in the interface `spiffy_triton.decoding.generate` drives:
``model(ids, position_ids=, layout=)`` -> logits, ``model.config.mask_token_id``, and a
verifier (`spiffy_verifier`) for its attention pattern:

- ``attention="bidirectional"`` (LLaDA-, Dream-like), with ``logits_shift=1`` for models that
  read position ``i``'s token from row ``i - 1`` (Dream): `dream.BidirectionalVerifier`;
- ``attention="block_causal"`` (SDAR-like): `sdar.BlockCausalVerifier`.

The `SegmentLayout` of a forward becomes a dense 4-D mask. It is passed *additive* (0 where a
query sees a key, the dtype's minimum elsewhere), in the model's dtype: transformers' eager
attention adds whatever 4-D mask it gets to the scores, so a boolean mask there would add 1
where visible and 0 where hidden, hiding nothing; SDPA takes an additive mask as well. Flash
attention ignores 4-D masks, so only ``"eager"`` and ``"sdpa"`` are accepted.

No KV cache: ``cache=None`` only (``verify="batch"`` is exact for bidirectional models;
packed is exact for block-causal ones). For cached decoding port the architecture to
`spiffy_triton.models` (as `DreamModel` and `SDARModel` are).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..layout import SegmentLayout
from .dream import BidirectionalVerifier
from .sdar import BlockCausalVerifier, block_causal_layout

ATTENTION_KINDS = ("bidirectional", "block_causal")
MASK_ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")


@dataclass(frozen=True)
class AdapterConfig:
    """What the decoder reads from ``model.config``."""

    mask_token_id: int
    embedding_size: int
    max_sequence_length: int
    eos_token_id: int | list | None = None


class HFDiffusionModel(nn.Module):
    """A `transformers` model as a Spiffy target (see the module docstring).

    Args:
        hf_model: a `transformers` model whose forward takes ``input_ids``, a 4-D
            ``attention_mask`` ``[B, 1, Tq, Tk]`` and ``position_ids``, and returns ``.logits``.
        mask_token_id: the mask token's id.
        logits_shift: 0 (position ``i``'s token from row ``i``) or 1 (from row ``i - 1``).
        attention: ``"bidirectional"`` or ``"block_causal"``.
        block_size: the block size of a block-causal model's forward without a layout.
        tokenizer: anything with ``encode(str)`` / ``decode(ids)`` (optional).
    """

    def __init__(
        self,
        hf_model: nn.Module,
        *,
        mask_token_id: int,
        logits_shift: int = 0,
        attention: str = "bidirectional",
        block_size: int | None = None,
        tokenizer=None,
    ):
        super().__init__()
        hf_config = getattr(hf_model, "config", None)
        if hf_config is None or not callable(hf_model):
            raise ValueError(
                "hf_model must be a transformers model (a module with a .config), got "
                f"{type(hf_model).__name__}"
            )
        implementation = getattr(hf_config, "_attn_implementation", None)
        if implementation not in MASK_ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"hf_model uses attn_implementation={implementation!r}; the adapter passes a "
                f"4-D mask, which only {MASK_ATTENTION_IMPLEMENTATIONS} honour (load the model "
                "with attn_implementation='sdpa')"
            )
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        if logits_shift not in (0, 1) or isinstance(logits_shift, bool):
            raise ValueError(f"logits_shift must be 0 or 1, got {logits_shift!r}")
        if attention == "block_causal" and logits_shift:
            raise ValueError("logits_shift=1 is supported for bidirectional attention only")
        if block_size is not None and (type(block_size) is not int or block_size < 1):
            raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")
        output = (
            hf_model.get_output_embeddings() if hasattr(hf_model, "get_output_embeddings") else None
        )
        vocab = getattr(output, "out_features", None) or hf_config.vocab_size
        if type(mask_token_id) is not int or not 0 <= mask_token_id < vocab:
            raise ValueError(f"mask_token_id must be an int in [0, {vocab}), got {mask_token_id!r}")
        self.hf_model = hf_model
        self.logits_shift = logits_shift
        self.attention = attention
        self.block_size = block_size
        self.tokenizer = tokenizer
        self.config = AdapterConfig(
            mask_token_id=mask_token_id,
            embedding_size=vocab,
            max_sequence_length=getattr(hf_config, "max_position_embeddings", None) or 2**31,
            eos_token_id=getattr(hf_config, "eos_token_id", None),
        )

    @property
    def trained_block_size(self) -> int | None:
        """A block-causal model's `block_size` (`generate`'s default block_length), else None."""
        return self.block_size if self.attention == "block_causal" else None

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf_model.parameters()).dtype

    def default_layout(self, length: int) -> SegmentLayout:
        if self.attention == "bidirectional":
            return SegmentLayout.full(length)
        if self.block_size is None:
            raise ValueError(
                "a block-causal model needs layout= or a block_size to build its default layout"
            )
        full, rest = divmod(length, self.block_size)
        return block_causal_layout(0, (self.block_size,) * full + ((rest,) if rest else ()))

    def additive_mask(self, layout: SegmentLayout) -> torch.Tensor:
        """``[1, 1, Mq, Mk]`` in the model's dtype: 0 where visible, the dtype's minimum
        elsewhere (never a boolean mask: eager attention adds the mask it is given)."""
        visible = layout.to_dense(self.device)
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=self.device)
        return mask.masked_fill_(~visible, torch.finfo(self.dtype).min)[None, None]

    def forward(self, input_ids, position_ids=None, layout=None, cache=None):
        """Logits ``[B, T, V]`` of `input_ids` ``[B, T]`` under `layout` (query rows = key
        rows = `input_ids`); position ids default to ``0..T-1``."""
        if cache is not None:
            raise ValueError("HFDiffusionModel has no KV cache: use cache=None")
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError("input_ids must be a [B, T] integer tensor")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be int64 or int32, got {input_ids.dtype}")
        b, t = input_ids.shape
        if input_ids.numel() and not 0 <= int(input_ids.min()) <= int(input_ids.max()) < (
            self.config.embedding_size
        ):
            raise ValueError(f"input_ids outside the vocabulary [0, {self.config.embedding_size})")
        if layout is None:
            layout = self.default_layout(t)
        if layout.num_q_rows != t or layout.num_k_rows != t:
            raise ValueError(
                f"layout has {layout.num_q_rows} query and {layout.num_k_rows} key rows; "
                f"input_ids has {t}"
            )
        if position_ids is None:
            position_ids = torch.arange(t, device=input_ids.device)
        if position_ids.dim() == 1:
            position_ids = position_ids[None]
        if tuple(position_ids.shape[-1:]) != (t,) or position_ids.shape[0] not in (1, b):
            raise ValueError(
                f"position_ids must have shape [{t}] or [{b}, {t}], got {tuple(position_ids.shape)}"
            )
        out = self.hf_model(
            input_ids=input_ids,
            attention_mask=self.additive_mask(layout).expand(b, 1, t, t),
            position_ids=position_ids.expand(b, t),
            use_cache=False,
        )
        return out.logits

    def spiffy_verifier(self, cache: str | None, verify: str | None):
        """The decoder's hook (`spiffy_triton.decoding.generate`)."""
        if self.attention == "block_causal":
            return BlockCausalVerifier(self, cache, verify)
        return BidirectionalVerifier(self, cache, verify, shift=self.logits_shift)
