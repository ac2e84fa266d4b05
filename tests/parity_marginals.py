"""marginals / rank_positions parity cases on any device: tokens, top-k ids, ranks and the
Philox stream exactly as the reference, probabilities / lse / entropy within the fp32
tolerance. No pytest here: the cases run under pytest (tests/test_marginals.py) and in the
standalone runner (tests/parity_cases.py), on CPU tensors (Triton interpreter) or CUDA tensors.
"""

from __future__ import annotations

import math

import torch
from utils import TOLERANCES, assert_close

import spiffy_triton
from spiffy_triton import contract

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
PARITY_SHAPES = [(1, 1), (3, 7), (5, 1023), (4, 1025), (2, 4099), (9, 300)]
# The vocabularies of LLaDA-8B and Dream-7B, rows from one block to a whole verify pack.
LARGE_VOCABS = (126464, 152064)
LARGE_ROWS = (1, 32, 288, 2048)


def make_logits(
    rows, vocab, dtype, generator, *, ties=False, suppressed=False, row_pad=0, device="cpu"
):
    """Random logits, optionally with many exact ties and -inf entries, in rows of stride
    vocab + row_pad (non-contiguous when row_pad > 0); drawn on the CPU, moved to `device`."""
    base = torch.randn(rows, vocab + row_pad, generator=generator, dtype=torch.float64) * 3
    if ties:
        base = torch.round(base)  # few distinct values: ties at every rank
    if suppressed:
        base[torch.rand(base.shape, generator=generator) < 0.3] = -math.inf
    return base.to(device=device, dtype=dtype)[:, :vocab]


def assert_same_marginals(actual, expected, *, exact_floats=False):
    assert torch.equal(actual.token, expected.token), (actual.token, expected.token)
    assert torch.equal(actual.topk_tokens, expected.topk_tokens)
    # lse / entropy / probabilities: fp32 accumulation in the kernel, float64 in the
    # reference, from the exactly widened inputs: the fp32 tolerance for every input dtype
    atol, rtol = (0.0, 0.0) if exact_floats else TOLERANCES[torch.float32]
    for name in ("prob", "topk_probs", "lse", "entropy"):
        actual_value, expected_value = getattr(actual, name), getattr(expected, name)
        assert_close(actual_value, expected_value, atol=atol, rtol=rtol, name=name)


def both_backends(logits, **kwargs):
    """(kernel, reference) outputs of `marginals` on the same logits."""
    kernel = spiffy_triton.marginals(logits, backend="triton", **kwargs)
    reference = spiffy_triton.marginals(logits, backend="torch", **kwargs)
    return kernel, reference


# ---- the cases: each takes its parameters and device=, raises AssertionError on a mismatch ----


def parity_case(dtype: torch.dtype, temperature: float, *, device: str) -> None:
    """Small shapes with ties, -inf entries and strided rows; argmax and Philox sampling."""
    gen = torch.Generator().manual_seed(2)
    for case, (rows, vocab) in enumerate(PARITY_SHAPES):
        logits = make_logits(
            rows,
            vocab,
            dtype,
            gen,
            ties=case % 2 == 0,
            suppressed=case % 3 == 1,
            row_pad=(0, 5, 64)[case % 3],
            device=device,
        )
        positions = torch.randint(0, 10_000, (rows,), generator=gen) if case % 2 else None
        kwargs = dict(
            top_k=(1, 8, 3, 5, 2, 8)[case],
            temperature=temperature,
            seed=123 + case,
            step=case,
            positions=None if positions is None else positions.to(device),
        )
        assert_same_marginals(*both_backends(logits, **kwargs))


def large_vocab_case(vocab: int, rows: int, temperature: float, *, device: str) -> None:
    """Real vocabularies in bf16 with top-8, Philox noise keyed by spread-out positions."""
    gen = torch.Generator().manual_seed(vocab + rows)
    logits = make_logits(rows, vocab, torch.bfloat16, gen, device=device)
    positions = (torch.arange(rows) * 7 + 1000).to(device)
    kwargs = dict(top_k=8, temperature=temperature, seed=2**40 + rows, step=5, positions=positions)
    assert_same_marginals(*both_backends(logits, **kwargs))


def largest_vocab_case(*, device: str) -> None:
    gen = torch.Generator().manual_seed(6)
    logits = make_logits(1, 262_144, torch.float16, gen, suppressed=True, device=device)
    kwargs = dict(top_k=8, temperature=0.9, seed=2**40 + 3, step=17)  # top-k and sampling
    assert_same_marginals(*both_backends(logits, **kwargs))


def strided_vocabulary_case(*, device: str) -> None:
    gen = torch.Generator().manual_seed(5)
    logits = make_logits(3, 2 * 1500, torch.float32, gen, ties=True, device=device)[:, ::2]
    assert logits.stride(1) == 2
    for temperature in (0.0, 1.3):
        assert_same_marginals(*both_backends(logits, top_k=4, temperature=temperature, seed=9))


def vocabulary_split_case(temperature: float, *, device: str) -> None:
    """Token / top-k ids are bitwise independent of how the vocabulary is split."""
    from spiffy_triton.kernels import marginals as kernel_module

    gen = torch.Generator().manual_seed(8)
    logits = make_logits(3, 9000, torch.bfloat16, gen, ties=True, suppressed=True, device=device)
    expected = spiffy_triton.marginals(
        logits, top_k=8, temperature=temperature, seed=1, backend="torch"
    )
    for config in ({"splits": 1}, {"splits": 2}, {"splits": 5, "block_v": 1024}):
        actual = kernel_module._marginals(logits, 8, temperature, 1, 0, None, config=config)
        assert_same_marginals(actual, expected)


def philox_stream_case(*, device: str) -> None:
    """The kernel's 32-bit Philox words are bitwise the reference's."""
    from spiffy_triton.kernels import marginals as kernel_module

    positions = torch.tensor([0, 1, 31, 4095, 2**31 - 1, 2**32 + 9, -1], device=device)
    for seed, step, vocab in ((0, 0, 1), (2**64 - 1, 2**32 - 1, 1030), (12345 + 2**37, 7, 3001)):
        actual = kernel_module.philox_uint32(seed, step, positions, vocab)
        expected = contract.philox_uint32(seed, step, positions, vocab)
        assert torch.equal(actual, expected)


def row_packing_case(*, device: str) -> None:
    """Sampled tokens depend on (seed, step, position), not on which rows are packed together."""
    gen = torch.Generator().manual_seed(4)
    logits = make_logits(6, 3000, torch.float32, gen, device=device)
    positions = torch.tensor([3, 4, 5, 3, 4, 5], device=device)
    logits[3:] = logits[:3]
    kwargs = dict(temperature=1.0, seed=5, step=2, backend="triton")
    packed = spiffy_triton.marginals(logits, positions=positions, **kwargs)
    alone = spiffy_triton.marginals(logits[4:5], positions=positions[4:5], **kwargs)
    assert torch.equal(packed.token[:3], packed.token[3:])
    assert packed.token[1] == alone.token[0]


def special_logits(device: str = "cpu") -> torch.Tensor:
    """Rows with -inf, NaN and +inf entries (docs/MARGINALS.md gives each one's answer)."""
    inf, nan = math.inf, math.nan
    rows = [
        [0.5, -inf, 2.0, -inf, 2.0, 1.0],  # suppressed tokens
        [-inf] * 6,  # nothing allowed
        [0.0, nan, 1.0, nan, 5.0, 0.0],  # NaN present
        [0.0, inf, 1.0, inf, nan, 0.0],  # NaN beats +inf
        [0.0, inf, 1.0, inf, -inf, 0.0],  # +inf present
    ]
    return torch.tensor(rows, device=device)


def special_rows_case(*, device: str) -> None:
    """-inf, NaN and +inf rows: the kernel gives the reference's defined answers."""
    logits = special_logits(device)
    for temperature in (0.0, 0.8):
        kernel, reference = both_backends(logits, top_k=3, temperature=temperature, seed=4)
        assert torch.equal(kernel.token, reference.token)
        assert torch.equal(kernel.topk_tokens, reference.topk_tokens)
        for name in ("prob", "topk_probs", "lse", "entropy"):
            a, e = getattr(kernel, name).cpu(), getattr(reference, name).cpu()
            assert torch.equal(a.isnan(), e.isnan()), name
            assert_close(a.nan_to_num(0.0), e.nan_to_num(0.0), dtype=torch.float32, name=name)


def rank_positions_case(dtype: torch.dtype, *, device: str) -> None:
    """Kernel ranks equal the reference's exactly (many ties, NaN, -inf, -0.0)."""
    gen = torch.Generator().manual_seed(3)
    for rows, length in ((3, 32), (2, 7), (1, 1), (2, 130)):
        conf = (torch.randint(0, 5, (rows, length), generator=gen) / 4).to(dtype)
        conf[0, :3] = torch.tensor([math.nan, -math.inf, -0.0], dtype=dtype)[: min(3, length)]
        eligible = torch.rand(rows, length, generator=gen) < 0.7
        conf, eligible = conf.to(device), eligible.to(device)
        kernel = spiffy_triton.rank_positions(conf, eligible, backend="triton")
        reference = spiffy_triton.rank_positions(conf, eligible, backend="torch")
        assert torch.equal(kernel, reference), (kernel, reference)
