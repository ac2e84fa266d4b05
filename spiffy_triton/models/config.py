"""`LLaDAConfig`: the architecture of a LLaDA checkpoint, read from and written to LLaDA's
``config.json`` keys (docs/DESIGN.md §5)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

# Keys of LLaDA's config.json that describe something this implementation does not do: each
# maps to the values that are compatible with it.
_COMPATIBLE_VALUES = {
    "activation_type": ("silu", "swiglu"),
    "block_type": ("llama",),
    "layer_norm_type": ("rms",),
    "weight_tying": (False,),
    "alibi": (False,),
    "rope": (True,),
    "include_bias": (False,),
    "include_qkv_bias": (False,),
    "bias_for_layer_norm": (False, None),
    "layer_norm_with_affine": (True, None),
    "scale_logits": (False,),
    "input_emb_norm": (False,),
    "attention_layer_norm": (False,),
    "multi_query_attention": (False, None),
    "clip_qkv": (None,),
}


def check_positive_ints(config, names) -> None:
    """Raise naming the first field of `names` that is not a positive int."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"config {name} must be a positive integer, got {value!r}")


def check_compatible_values(extra: dict, compatible: dict, implementation: str) -> None:
    """Raise on a config.json key in `extra` whose value `implementation` does not support."""
    for key, allowed in compatible.items():
        if key in extra and extra[key] not in allowed:
            raise ValueError(
                f"config {key}={extra[key]!r} is not supported by {implementation} "
                f"(supported: {allowed})"
            )


def config_from_keys(cls, data: dict, source: str):
    """`cls` from the keys of `data` that are its fields (None: the default); every other key
    goes to `extra`. Errors are prefixed with `source`."""
    names = {f.name for f in fields(cls)} - {"extra"}
    known = {k: v for k, v in data.items() if k in names and v is not None}
    extra = {k: v for k, v in data.items() if k not in names}
    try:
        return cls(**known, extra=extra)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: {error}") from None


@dataclass
class LLaDAConfig:
    d_model: int
    n_heads: int
    n_layers: int
    mlp_hidden_size: int
    vocab_size: int
    n_kv_heads: int | None = None
    embedding_size: int | None = None
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_sequence_length: int = 4096
    mask_token_id: int = 126336
    eos_token_id: int = 126081
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    # Every other key of config.json, kept so that a saved checkpoint keeps them.
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.embedding_size is None:
            self.embedding_size = self.vocab_size
        if self.pad_token_id is None:
            self.pad_token_id = self.eos_token_id
        check_positive_ints(
            self, ("d_model", "n_heads", "n_layers", "mlp_hidden_size", "vocab_size")
        )
        if self.d_model % self.n_heads:
            raise ValueError(
                f"config d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"config n_heads ({self.n_heads}) must be a multiple of n_kv_heads "
                f"({self.n_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"config head_dim (d_model / n_heads = {self.head_dim}) must be even")
        if self.embedding_size < self.vocab_size:
            raise ValueError(
                f"config embedding_size ({self.embedding_size}) must be >= vocab_size "
                f"({self.vocab_size})"
            )
        for name in ("mask_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if not 0 <= value < self.embedding_size:
                raise ValueError(
                    f"config {name} ({value}) outside the embedding [0, {self.embedding_size})"
                )
        if self.rope_theta <= 0:
            raise ValueError(f"config rope_theta must be > 0, got {self.rope_theta}")
        check_compatible_values(self.extra, _COMPATIBLE_VALUES, "this LLaDA implementation")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "config") -> LLaDAConfig:
        """Build from a LLaDA ``config.json`` dict; unknown keys are kept in `extra`."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        required = ("d_model", "n_heads", "n_layers", "mlp_hidden_size", "vocab_size")
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"{source}: missing required LLaDA config keys {missing}")
        return config_from_keys(cls, data, source)

    def to_dict(self) -> dict:
        out = dict(self.extra)
        for f in fields(self):
            if f.name != "extra":
                out[f.name] = getattr(self, f.name)
        out.setdefault("architectures", ["LLaDAModelLM"])
        out.setdefault("model_type", "llada")
        out.setdefault("activation_type", "silu")
        out.setdefault("block_type", "llama")
        out.setdefault("layer_norm_type", "rms")
        out.setdefault("weight_tying", False)
        out.setdefault("include_bias", False)
        out.setdefault("rope", True)
        return out


def llada_8b_config() -> LLaDAConfig:
    """The architecture of LLaDA-8B (docs/DESIGN.md §5), for shape and name checks."""
    return LLaDAConfig(
        d_model=4096,
        n_heads=32,
        n_kv_heads=32,
        n_layers=32,
        mlp_hidden_size=12288,
        vocab_size=126464,
        embedding_size=126464,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        max_sequence_length=4096,
        mask_token_id=126336,
        eos_token_id=126081,
        pad_token_id=126081,
        bos_token_id=126080,
    )
