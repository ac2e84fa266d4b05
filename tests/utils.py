"""Shared test helpers: per-dtype tolerances and a comparison that says where and how much.

Import as `from utils import assert_close, TOLERANCES` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import os

import torch

# (atol, rtol) for outputs computed with fp32 accumulation from inputs of the given dtype,
# compared with a float32/float64 reference of the same inputs.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    if dtype not in TOLERANCES:
        raise KeyError(f"no tolerance defined for {dtype}")
    return TOLERANCES[dtype]


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def describe_difference(
    actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, name: str = "tensor"
) -> str:
    """Where and by how much `actual` departs from `expected` (for assertion messages)."""
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    both_nan = torch.isnan(a) & torch.isnan(e)
    same_inf = torch.isinf(a) & torch.isinf(e) & (a == e)
    diff = (a - e).abs()
    diff[both_nan | same_inf] = 0.0
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
    allowed = atol + rtol * e.abs().nan_to_num(0.0, posinf=0.0, neginf=0.0)
    bad = diff > allowed
    n_bad = int(bad.sum())
    if n_bad == 0:
        return f"{name}: all {a.numel()} elements within atol={atol:g} rtol={rtol:g}"
    flat = int(torch.argmax(torch.where(bad, diff, torch.zeros_like(diff))))
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape))
    return (
        f"{name}: {n_bad} of {a.numel()} elements ({100.0 * n_bad / max(a.numel(), 1):.3g}%) "
        f"outside atol={atol:g} rtol={rtol:g}; worst at index {idx}: actual {a[idx].item():.8g} "
        f"expected {e[idx].item():.8g} (|diff| {diff[idx].item():.3g}); "
        f"max |diff| {diff.max().item():.3g}"
    )


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    dtype: torch.dtype | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    name: str = "tensor",
):
    """Assert `actual` ~ `expected` with the tolerance of `dtype` (default: actual's dtype)."""
    assert actual.shape == expected.shape, (
        f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    )
    d_atol, d_rtol = tolerance(dtype or actual.dtype)
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    message = describe_difference(actual, expected, atol, rtol, name)
    assert message.endswith(f"within atol={atol:g} rtol={rtol:g}"), message


# Token id of the mask in the tiny random models below (the bundled model uses 2 as well).
TINY_MASK_ID = 2


def tiny_random_llada(
    seed: int, *, std: float | None = None, max_sequence_length: int = 64, model_class=None
):
    """A 2-layer float64 LLaDA model with random weights (vocab 24, mask id 2, eos 0), for
    decoding tests that need a real model but not a trained one."""
    from spiffy_triton.models import LLaDAConfig, LLaDAModel

    config = LLaDAConfig(
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        n_layers=2,
        mlp_hidden_size=64,
        vocab_size=24,
        max_sequence_length=max_sequence_length,
        mask_token_id=TINY_MASK_ID,
        eos_token_id=0,
    )
    model = (model_class or LLaDAModel)(config, backend="torch")
    return model.init_weights(seed, std=std).to(torch.float64).eval()


def save_char_llada(path, seed: int, **sizes):
    """Save a random-weight LLaDA model over the bundled character tokenizer (d_model 32, MLP
    64; heads, layers and max length from `sizes`) with its tokenizer to `path`: a checkpoint
    directory that `load_model` and the command line read like the bundled one."""
    from spiffy_triton.models import CharTokenizer, LLaDAConfig, LLaDAModel, save_checkpoint

    tokenizer = CharTokenizer()
    config = LLaDAConfig(
        d_model=32,
        mlp_hidden_size=64,
        vocab_size=tokenizer.vocab_size,
        mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **sizes,
    )
    save_checkpoint(LLaDAModel(config, backend="torch").init_weights(seed), path)
    tokenizer.save(path / "tokenizer.json")
    return path


# The tiny random Qwen-family models (Dream, SDAR, transformers' LLaMA / Qwen): sizes, mask id.
TINY_QWEN_MASK_ID = 63
TINY_QWEN_SIZES = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
    vocab_size=64,
)


def tiny_qwen_config(**overrides):
    """A `QwenConfig` of the tiny sizes (rope_theta 5e4, mask id TINY_QWEN_MASK_ID)."""
    from spiffy_triton.models import QwenConfig

    defaults = dict(rope_theta=50000.0, mask_token_id=TINY_QWEN_MASK_ID)
    return QwenConfig(**{**TINY_QWEN_SIZES, **defaults, **overrides})


def transformers_qwen_kwargs(config) -> dict:
    """Keyword arguments of transformers' Qwen2Config / Qwen3Config for the architecture of a
    `QwenConfig` (head_dim, tying and attention are left to the caller)."""
    return dict(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        rms_norm_eps=config.rms_norm_eps,
    )


def random_token_ids(length: int, seed: int = 0) -> torch.Tensor:
    """[1, length] ids below TINY_QWEN_MASK_ID (no mask tokens), seeded."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY_QWEN_MASK_ID, (1, length), generator=generator)


def parity_params(cases, devices=("cpu", "cuda")):
    """pytest params (case, device) for the shared parity cases of tests/parity_cases.py: every
    case on every device, skipped with the reason where the device cannot run it."""
    import pytest
    from parity_cases import skip_reason

    params = []
    for case in cases:
        for device in devices:
            marks = [pytest.mark.slow] if case.slow else []
            reason = skip_reason(case, device)
            if reason:
                marks.append(pytest.mark.skip(reason=reason))
            params.append(pytest.param(case, device, id=f"{case.name}-{device}", marks=marks))
    return params
