"""Shapes of the modeled model (LLaDA-8B), of the GPUs, and of one verify step."""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9
TFLOP = 1e12
LOGIT_BYTES = 2  # bf16 logits out of the LM head


@dataclass(frozen=True)
class ModelShape:
    """Dimensions of a LLaMA-style bidirectional transformer (SwiGLU MLP, untied LM head)."""

    name: str
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mlp_hidden: int
    vocab: int
    weight_bytes: int = 2  # bf16

    def __post_init__(self):
        for field in ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_hidden"):
            if getattr(self, field) <= 0:
                raise ValueError(f"ModelShape.{field} must be positive, got {getattr(self, field)}")
        if self.vocab <= 0 or self.weight_bytes <= 0:
            raise ValueError("ModelShape.vocab and weight_bytes must be positive")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )

    @property
    def q_width(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def attn_params(self) -> int:  # q, k, v, out projections
        return self.d_model * (2 * self.q_width + 2 * self.kv_width)

    @property
    def mlp_params(self) -> int:  # gate, up, down
        return 3 * self.d_model * self.mlp_hidden

    @property
    def layer_params(self) -> int:  # norms' weights are negligible and left out
        return self.attn_params + self.mlp_params

    @property
    def lm_head_params(self) -> int:
        return self.d_model * self.vocab

    @property
    def total_params(self) -> int:
        """Layers + LM head + embedding (untied)."""
        return self.n_layers * self.layer_params + 2 * self.lm_head_params

    @property
    def streamed_weight_bytes(self) -> int:
        """Weights every forward reads in full: all layers and the LM head (the embedding is
        a gather of the rows' token vectors, counted with the activations)."""
        return (self.n_layers * self.layer_params + self.lm_head_params) * self.weight_bytes


LLADA_8B = ModelShape(
    name="LLaDA-8B",
    d_model=4096,
    n_layers=32,
    n_heads=32,
    n_kv_heads=32,
    head_dim=128,
    mlp_hidden=12288,
    vocab=126464,
)


@dataclass(frozen=True)
class Hardware:
    """Roofline ceilings. `peak_*` are vendor datasheet numbers; `*_eff` are ASSUMED fractions
    of them that tuned kernels reach (not measured by this project)."""

    name: str
    peak_tflops: float  # dense bf16 tensor-core, no sparsity
    peak_tbps: float  # HBM bandwidth, TB/s
    compute_eff: float
    memory_eff: float
    source: str

    def __post_init__(self):
        if self.peak_tflops <= 0 or self.peak_tbps <= 0:
            raise ValueError(f"{self.name}: peak_tflops and peak_tbps must be positive")
        for field in ("compute_eff", "memory_eff"):
            value = getattr(self, field)
            if not 0 < value <= 1:
                raise ValueError(f"{self.name}: {field} must be in (0, 1], got {value}")

    @property
    def flops_per_s(self) -> float:
        return self.peak_tflops * TFLOP * self.compute_eff

    @property
    def bytes_per_s(self) -> float:
        return self.peak_tbps * 1e12 * self.memory_eff

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) above which an operator is compute-bound."""
        return self.flops_per_s / self.bytes_per_s


# Assumed achievable fractions: large bf16 GEMMs with cuBLAS/CUTLASS reach roughly 70% of the
# dense peak on Hopper; streaming kernels roughly 85% of HBM bandwidth. Override on the CLI.
DEFAULT_COMPUTE_EFF = 0.70
DEFAULT_MEMORY_EFF = 0.85
HARDWARE = {
    "H100-SXM": Hardware(
        "H100-SXM",
        peak_tflops=989.0,
        peak_tbps=3.35,
        compute_eff=DEFAULT_COMPUTE_EFF,
        memory_eff=DEFAULT_MEMORY_EFF,
        source="NVIDIA H100 SXM5 datasheet: 989 TFLOP/s dense BF16, 3.35 TB/s HBM3, 80 GB",
    ),
    "H200-SXM": Hardware(
        "H200-SXM",
        peak_tflops=989.0,
        peak_tbps=4.8,
        compute_eff=DEFAULT_COMPUTE_EFF,
        memory_eff=DEFAULT_MEMORY_EFF,
        source="NVIDIA H200 SXM datasheet: 989 TFLOP/s dense BF16, 4.8 TB/s HBM3e, 141 GB",
    ),
}


@dataclass(frozen=True)
class StepShape:
    """One verify forward: context C, block length L, D drafts, cached (dual cache) or not."""

    context: int
    block: int
    drafts: int
    cached: bool = True

    def __post_init__(self):
        if self.context < 0:
            raise ValueError(f"context must be >= 0, got {self.context}")
        if self.block <= 0:
            raise ValueError(f"block must be positive, got {self.block}")
        if self.drafts < 0:
            raise ValueError(f"drafts must be >= 0, got {self.drafts}")

    @property
    def block_rows(self) -> int:
        """Rows of the root block and its draft copies: the rows that need logits."""
        return (1 + self.drafts) * self.block

    @property
    def query_rows(self) -> int:
        return self.block_rows if self.cached else self.context + self.block_rows

    @property
    def key_rows(self) -> int:
        return self.context + self.block_rows

    @property
    def fresh_rows(self) -> int:
        """Rows that run through the layers (and whose K/V are computed in this forward)."""
        return self.query_rows

    @property
    def visible_pairs(self) -> int:
        """(query, key) pairs the graph mask lets attend (docs/DESIGN.md §3). Every block
        copy sees the context and itself: C + L keys; without cache the C context rows also
        see the context and the root (never a draft)."""
        seen = self.context + self.block
        if self.cached:
            return self.block_rows * seen
        return seen * seen + self.drafts * self.block * seen

    @property
    def dense_pairs(self) -> int:
        return self.query_rows * self.key_rows
