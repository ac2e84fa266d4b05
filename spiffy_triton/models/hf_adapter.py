"""Bring your own dLLM: Spiffy decoding of any `transformers` model that takes a 4-D
attention mask and position ids (docs/MODELS.md).

`HFDiffusionModel` wraps such a model in the interface `spiffy_triton.decoding.generate` drives:
``model(ids, position_ids=, layout=)`` -> logits, ``model.config.mask_token_id``, and a
verifier (`spiffy_verifier`) for its attention pattern:

- ``attention="bidirectional"`` (LLaDA-, Dream-like), with ``logits_shift=1`` for models that
  read position ``i``'s token from row ``i - 1`` (Dream): `dream.BidirectionalVerifier`;
- ``attention="block_causal"`` (SDAR-like): `sdar.BlockCausalVerifier`.

With ``attn_implementation="eager"`` or ``"sdpa"`` the `SegmentLayout` of a forward becomes a
dense 4-D mask. It is passed *additive* (0 where a query sees a key, the dtype's minimum
elsewhere), in the model's dtype: transformers' eager attention adds whatever 4-D mask it gets
to the scores, so a boolean mask there would add 1 where visible and 0 where hidden, hiding
nothing; SDPA takes an additive mask as well. Flash attention ignores 4-D masks.

With ``attn_implementation="spiffy_graph"`` (`SPIFFY_ATTENTION`, registered with transformers'
``AttentionInterface`` by `register_hf_attention`) no mask is built: the layout itself reaches
every attention layer as the keyword argument ``spiffy_layout`` and the layer runs
`spiffy_triton.dispatch.graph_attention` (the Triton kernel on CUDA, the reference on CPU; the
custom op ``torch.ops.spiffy.graph_attention`` under ``torch.compile``). transformers builds no
mask for an implementation it has no mask function for, so the dense ``[Mq, Mk]`` mask is
never materialised (benchmarks/hf_mask_memory.py measures what that saves).

No KV cache: ``cache=None`` only (``verify="batch"`` is exact for bidirectional models;
packed is exact for block-causal ones). For cached decoding port the architecture to
`spiffy_triton.models` (as `DreamModel` and `SDARModel` are).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..dispatch import BACKENDS, graph_attention
from ..layout import SegmentLayout
from ..ops import graph_attention_op
from .sdar import BlockCausalVerifier, block_causal_layout
from .verifier import BidirectionalVerifier

ATTENTION_KINDS = ("bidirectional", "block_causal")
MASK_ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")
SPIFFY_ATTENTION = "spiffy_graph"
LAYOUT_KWARG = "spiffy_layout"
BACKEND_KWARG = "spiffy_backend"


def spiffy_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function (``AttentionInterface``) under a `SegmentLayout`.

    ``query [B, Hq, Mq, d]``, ``key, value [B, Hkv, Mk, d]`` (transformers passes grouped
    key/value heads unrepeated; the kernel reads head ``h // (Hq // Hkv)``). The layout comes
    as the keyword argument ``spiffy_layout`` of the model's forward (transformers hands its
    extra keyword arguments to every attention layer), the backend as ``spiffy_backend``
    (default ``"auto"``). Returns ``(out [B, Mq, Hq, d], None)`` as transformers expects.
    """
    layout = kwargs.get(LAYOUT_KWARG)
    if not isinstance(layout, SegmentLayout):
        raise ValueError(
            f"attn_implementation={SPIFFY_ATTENTION!r} needs the model's forward to get "
            f"{LAYOUT_KWARG}=<SegmentLayout> (got {type(layout).__name__}); HFDiffusionModel "
            "passes it"
        )
    if attention_mask is not None:
        raise ValueError(
            f"attn_implementation={SPIFFY_ATTENTION!r} takes the layout, not attention_mask "
            f"(got a mask of shape {tuple(attention_mask.shape)})"
        )
    if dropout and module.training:
        raise ValueError(f"attn_implementation={SPIFFY_ATTENTION!r} has no dropout, got {dropout}")
    backend = kwargs.get(BACKEND_KWARG, "auto")
    if torch.compiler.is_compiling():
        out = graph_attention_op(query, key, value, layout, scale=scaling, backend=backend)
    else:
        out = graph_attention(query, key, value, layout, scale=scaling, backend=backend)
    return out.transpose(1, 2).contiguous(), None


def register_hf_attention() -> str:
    """Register `spiffy_attention_forward` with transformers' ``AttentionInterface`` under
    `SPIFFY_ATTENTION` (idempotent) and return that name.

    >>> from transformers import Qwen3Config, Qwen3ForCausalLM
    >>> name = register_hf_attention()
    >>> config = Qwen3Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
    ...                      num_key_value_heads=2, intermediate_size=48, vocab_size=64)
    >>> config._attn_implementation = name  # or set_attn_implementation(name) on a model
    >>> model = HFDiffusionModel(Qwen3ForCausalLM(config), mask_token_id=63)
    """
    from transformers import AttentionInterface

    AttentionInterface.register(SPIFFY_ATTENTION, spiffy_attention_forward)
    return SPIFFY_ATTENTION


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
        backend: the `graph_attention` backend of ``attn_implementation="spiffy_graph"``
            (``"auto"``, ``"triton"``, ``"torch"``).
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
        backend: str = "auto",
    ):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        hf_config = getattr(hf_model, "config", None)
        if hf_config is None or not callable(hf_model):
            raise ValueError(
                "hf_model must be a transformers model (a module with a .config), got "
                f"{type(hf_model).__name__}"
            )
        implementation = getattr(hf_config, "_attn_implementation", None)
        if implementation not in (*MASK_ATTENTION_IMPLEMENTATIONS, SPIFFY_ATTENTION):
            raise ValueError(
                f"hf_model uses attn_implementation={implementation!r}; the adapter passes "
                f"either a 4-D mask, which only {MASK_ATTENTION_IMPLEMENTATIONS} honour, or the "
                f"layout itself to {SPIFFY_ATTENTION!r} (register_hf_attention(), then "
                f"model.set_attn_implementation({SPIFFY_ATTENTION!r}))"
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
        self.backend = backend
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
        if self.uses_layout:
            mask_kwargs = {LAYOUT_KWARG: layout, BACKEND_KWARG: self.backend}
        else:
            mask_kwargs = {"attention_mask": self.additive_mask(layout).expand(b, 1, t, t)}
        out = self.hf_model(
            input_ids=input_ids,
            position_ids=position_ids.expand(b, t),
            use_cache=False,
            **mask_kwargs,
        )
        return out.logits

    @property
    def uses_layout(self) -> bool:
        """Whether the model's attention takes the layout (`SPIFFY_ATTENTION`) or a dense mask."""
        return getattr(self.hf_model.config, "_attn_implementation", None) == SPIFFY_ATTENTION

    def spiffy_verifier(self, cache: str | None, verify: str | None):
        """The decoder's hook (`spiffy_triton.decoding.generate`)."""
        if self.attention == "block_causal":
            return BlockCausalVerifier(self, cache, verify)
        return BidirectionalVerifier(self, cache, verify, shift=self.logits_shift)
