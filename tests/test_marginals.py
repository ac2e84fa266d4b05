"""marginals / rank_positions: reference semantics, kernel parity, random stream, bad inputs.

The reference (backend="torch") is checked against independent PyTorch compositions; the
Triton kernel (backend="triton", interpreted on CPU) against the reference: tokens, top-k ids,
ranks and the 32-bit Philox stream exactly, probabilities / lse / entropy within the
per-dtype tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch
from parity_cases import cases_of
from parity_marginals import special_logits
from utils import TOLERANCES, assert_close, parity_params

import spiffy_triton
from spiffy_triton import contract
from spiffy_triton.reference import marginals as ref

BACKENDS = ("torch", "triton")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def run(logits, backend, **kwargs):
    return spiffy_triton.marginals(logits, backend=backend, **kwargs)


def tie_free_logits(rows, vocab, dtype, generator):
    """Logits with no two equal values in a row: a permutation of exact small multiples."""
    perms = torch.stack([torch.randperm(vocab, generator=generator) for _ in range(rows)])
    return ((perms.to(torch.float64) - vocab // 2) / 16).to(dtype)


# ------------------------------------------------------------------------------------------
# Reference against independent compositions
# ------------------------------------------------------------------------------------------


def test_philox_known_answers():
    """Random123's published Philox4x32-10 known-answer vectors."""
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for counter, key, expected in cases:
        words = contract.philox4x32_10(*(torch.tensor([c]) for c in counter), *key)
        assert tuple(int(w) for w in words) == expected


@pytest.mark.parametrize("dtype", DTYPES + (torch.float64,))
def test_reference_matches_torch_composition(dtype):
    gen = torch.Generator().manual_seed(1)
    vocab = 250 if dtype == torch.bfloat16 else 777  # bf16 holds integers exactly up to 256
    logits = tie_free_logits(6, vocab, dtype, gen)
    out = run(logits, "torch", top_k=5)
    x = logits.double()
    expected_top = torch.topk(x, 5, dim=-1)
    assert torch.equal(out.token, x.argmax(-1))
    assert torch.equal(out.topk_tokens, expected_top.indices)
    p = torch.softmax(x, -1)
    atol, rtol = TOLERANCES[torch.float32]
    log_z = torch.logsumexp(x, -1, True)
    assert_close(out.topk_probs, (expected_top.values - log_z).exp().float(), name="topk_probs")
    assert_close(out.prob, p.gather(1, out.token[:, None])[:, 0].float(), name="prob")
    assert_close(out.lse, torch.logsumexp(x, -1).float(), name="lse")
    entropy = -(p * torch.log_softmax(x, -1)).sum(-1)
    assert_close(out.entropy, entropy.float(), atol=atol, rtol=rtol, name="entropy")
    assert out.token.dtype == torch.int64 and out.topk_tokens.dtype == torch.int64
    assert out.prob.dtype == out.topk_probs.dtype == out.lse.dtype == torch.float32


def test_reference_ties_go_to_lowest_id():
    logits = torch.tensor(
        [[1.0, 3.0, 3.0, 2.0, 3.0, 2.0], [0.0, -0.0, 0.0, -1.0, -0.0, -1.0]], dtype=torch.float32
    )
    out = run(logits, "torch", top_k=6)
    assert out.topk_tokens.tolist() == [[1, 2, 4, 3, 5, 0], [0, 1, 2, 4, 3, 5]]
    assert out.token.tolist() == [1, 0]


def test_reference_gumbel_sampling_follows_softmax():
    """Chi-square: tokens drawn at T follow softmax(logits / T) (8 tokens, 60k draws)."""
    temperature = 0.7
    row = torch.tensor([0.3, -1.2, 2.0, 0.0, 1.1, -0.4, 0.9, 1.6])
    draws = 60_000
    logits = row.expand(draws, -1)
    tokens = run(logits, "torch", temperature=temperature, seed=11, step=3).token
    observed = torch.bincount(tokens, minlength=8).double()
    expected = torch.softmax(row.double() / temperature, 0) * draws
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi_square_p_value(chi2, dof=7) > 1e-3, f"chi2={chi2:.2f} (7 dof)"


def chi_square_p_value(chi2: float, dof: int) -> float:
    half = torch.tensor(dof / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(half, torch.tensor(chi2 / 2, dtype=torch.float64)))


def chi_square_critical(dof: int, alpha: float) -> float:
    """The chi-square value whose upper tail is `alpha` (bisection on the p-value)."""
    lo, hi = 0.0, 1000.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if chi_square_p_value(mid, dof) > alpha else (lo, mid)
    return hi


def noncentral_chi_square_power(noncentrality: float, dof: int, critical: float) -> float:
    """P(chi-square with `dof` degrees and this noncentrality > critical), by simulation."""
    z = torch.randn(200_000, dof, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z[:, 0] += math.sqrt(noncentrality)
    return float(((z**2).sum(1) > critical).double().mean())


# The sized temperature test: 4 tokens, T = 0.7, N draws. Pearson's statistic against the
# expected p0 = softmax(row / T) has, when the sampler uses T + dT instead, noncentrality
# N * sum((p1 - p0)**2 / p0) (p1 = softmax(row / (T + dT))); N is the smallest round number
# that rejects |dT| = 0.01 with probability >= 0.99 at the test's level 1e-3.
SIZED_ROW = (-2.0, -1.0, 0.0, 1.0)
SIZED_T, SIZED_DT, SIZED_DRAWS, SIZED_ALPHA = 0.7, 0.01, 300_000, 1e-3


def pearson(observed: torch.Tensor, probabilities: torch.Tensor) -> float:
    expected = probabilities * observed.sum()
    return float(((observed - expected) ** 2 / expected).sum())


def test_gumbel_chi_square_is_sized_for_a_temperature_error_of_0_01():
    """Design, then the draws: power >= 0.99 against T +- 0.01 (the 8-token test above with
    60k draws has about 14%); the reference's tokens at T fit softmax(row / T); the same
    tokens are rejected against T +- 0.01. The kernel's noise words are bitwise the
    reference's (test_kernel_gumbel_noise_matches_reference_to_a_few_ulps, the philox_stream
    parity case), so this covers its sampling distribution too; at this size the kernel's
    own draws would take minutes in the interpreter."""
    row = torch.tensor(SIZED_ROW, dtype=torch.float64)
    dof = len(SIZED_ROW) - 1
    critical = chi_square_critical(dof, SIZED_ALPHA)
    p0 = torch.softmax(row / SIZED_T, 0)
    for dt in (SIZED_DT, -SIZED_DT):
        p1 = torch.softmax(row / (SIZED_T + dt), 0)
        noncentrality = SIZED_DRAWS * float(((p1 - p0) ** 2 / p0).sum())
        power = noncentral_chi_square_power(noncentrality, dof, critical)
        assert power >= 0.99, f"dT={dt}: power {power:.3f} (noncentrality {noncentrality:.1f})"
    logits = row.float().expand(SIZED_DRAWS, -1)
    tokens = run(logits, "torch", temperature=SIZED_T, seed=17, step=9).token
    observed = torch.bincount(tokens, minlength=len(SIZED_ROW)).double()
    chi2 = pearson(observed, p0)
    assert chi_square_p_value(chi2, dof) > SIZED_ALPHA, f"chi2={chi2:.2f} ({dof} dof)"
    for dt in (SIZED_DT, -SIZED_DT):
        wrong = pearson(observed, torch.softmax(row / (SIZED_T + dt), 0))
        assert chi_square_p_value(wrong, dof) < SIZED_ALPHA, f"T{dt:+}: chi2={wrong:.2f}"


INDEPENDENCE_DRAWS = 40_000


@pytest.mark.parametrize(
    "other",
    [
        dict(step=6),  # the same positions one step later
        dict(shift=1),  # the next positions, same step
        dict(step=6, shift=1),  # both
        dict(step=5 + 2**16, shift=2**20),  # far away in both
        dict(seed=4),  # another seed
        dict(uniform=True),  # random remasking's uniform stream at the same keys
    ],
    ids=["next-step", "next-position", "diagonal", "far", "next-seed", "remasking-stream"],
)
def test_draws_are_pairwise_independent_across_positions_and_steps(other):
    """Tokens drawn at T = 1 from 4 equally likely ids at keys (seed 3, step 5, position p)
    and at another key: the 4 x 4 table of pairs against the independent uniform table
    (Pearson, 15 dof, level 1e-3). With 40k pairs the test rejects any change of 0.01 in
    two cells' probabilities (noncentrality 128)."""
    from spiffy_triton.decoding.rules import remasking_uniform

    positions = torch.arange(INDEPENDENCE_DRAWS) * 7919
    logits = torch.zeros(INDEPENDENCE_DRAWS, 4)
    first = run(logits, "torch", temperature=1.0, seed=3, step=5, positions=positions).token
    if other.get("uniform"):
        uniform = remasking_uniform(3, 5, positions).to(torch.float64)
        second = torch.clamp((uniform * 4).long(), max=3)
    else:
        second = run(
            logits,
            "torch",
            temperature=1.0,
            seed=other.get("seed", 3),
            step=other.get("step", 5),
            positions=positions + other.get("shift", 0),
        ).token
    table = torch.bincount(first * 4 + second, minlength=16).double()
    chi2 = pearson(table, torch.full((16,), 1 / 16, dtype=torch.float64))
    assert chi_square_p_value(chi2, 15) > 1e-3, f"chi2={chi2:.2f} (15 dof)"
    assert (first != second).any()


def test_noise_is_a_function_of_seed_step_position_vocab():
    positions = torch.tensor([5, 9, 5, 1_000_000, 2**32 + 5])
    noise = contract.gumbel_noise(7, 2, positions, 3000)
    assert torch.equal(noise[0], noise[2])
    assert torch.equal(noise[0], noise[4])  # positions are taken mod 2**32
    assert not torch.equal(noise[0], noise[1])
    alone = contract.gumbel_noise(7, 2, positions[1:2], 3000)
    assert torch.equal(alone[0], noise[1])
    assert not torch.equal(contract.gumbel_noise(7, 3, positions, 3000), noise)
    assert not torch.equal(contract.gumbel_noise(8, 2, positions, 3000), noise)
    assert not torch.equal(contract.gumbel_noise(7 + 2**32, 2, positions, 3000), noise)
    # a prefix of the vocabulary draws the same noise
    assert torch.equal(contract.gumbel_noise(7, 2, positions, 1100), noise[:, :1100])
    assert bool(torch.isfinite(noise).all())


def test_gumbel_transform_range_and_moments():
    edges = torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1])
    g = contract.gumbel_from_uint32(edges)
    assert bool(torch.isfinite(g).all())
    assert bool((g[1:] >= g[:-1]).all())  # monotone in the word
    assert abs(float(g[-1]) - 33 * math.log(2)) < 1e-3
    sample = contract.gumbel_noise(0, 0, torch.arange(64), 4096).double()
    assert abs(float(sample.mean()) - 0.5772156649) < 0.01
    assert abs(float(sample.std()) - math.pi / math.sqrt(6)) < 0.01


@pytest.mark.parametrize("backend", BACKENDS)
def test_special_rows(backend):
    inf = math.inf
    logits = special_logits()
    for temperature in (0.0, 0.8):
        out = run(logits, backend, top_k=3, temperature=temperature, seed=4)
        assert out.token.tolist()[1:] == [0, 1, 4, 1]
        assert out.topk_tokens.tolist() == [[2, 4, 5], [0, 1, 2], [1, 3, 4], [4, 1, 3], [1, 3, 2]]
        p = torch.softmax(logits[0].double(), 0)
        assert_close(out.topk_probs[0], p[[2, 4, 5]].float())
        assert_close(out.lse[0], torch.logsumexp(logits[0].double(), 0).float())
        assert out.token[0] in (0, 2, 4, 5)
        assert out.topk_probs[1].tolist() == [0.0, 0.0, 0.0] and out.prob[1] == 0.0
        assert out.lse[1] == -inf and out.entropy[1] == 0.0
        for row in (2, 3):
            assert math.isnan(out.lse[row]) and math.isnan(out.entropy[row])
            assert math.isnan(out.prob[row]) and bool(out.topk_probs[row].isnan().all())
        assert out.lse[4] == inf and math.isnan(out.entropy[4]) and math.isnan(out.prob[4])
        assert bool(out.topk_probs[4].isnan().all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_vocabularies_and_empty(backend):
    out = run(torch.tensor([[3.0], [-math.inf]]), backend, top_k=4, temperature=0.5)
    assert out.token.tolist() == [0, 0]
    assert out.topk_tokens.tolist() == [[0, -1, -1, -1], [0, -1, -1, -1]]
    assert out.topk_probs.tolist() == [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    assert out.prob.tolist() == [1.0, 0.0] and out.entropy.tolist() == [0.0, 0.0]
    assert out.lse.tolist() == [3.0, -math.inf]
    empty = run(torch.randn(0, 50), backend, top_k=2, temperature=1.0)
    assert empty.token.shape == (0,) and empty.topk_tokens.shape == (0, 2)
    assert empty.topk_probs.shape == (0, 2) and empty.lse.shape == (0,)


# ------------------------------------------------------------------------------------------
# rank_positions / count_above_threshold
# ------------------------------------------------------------------------------------------


def rank_by_python(conf_row, elig_row):
    def key(i):
        c = conf_row[i]
        c = -math.inf if math.isnan(c) else c
        return (0 if elig_row[i] else 1, -c if elig_row[i] else 0.0, i)

    return sorted(range(len(conf_row)), key=key)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.float64))
def test_rank_positions(backend, dtype):
    gen = torch.Generator().manual_seed(3)
    for rows, length in ((3, 32), (2, 7), (1, 1), (2, 130)):
        conf = (torch.randint(0, 5, (rows, length), generator=gen) / 4).to(dtype)  # many ties
        conf[0, :3] = torch.tensor([math.nan, -math.inf, -0.0], dtype=dtype)[: min(3, length)]
        eligible = torch.rand(rows, length, generator=gen) < 0.7
        ranks = spiffy_triton.rank_positions(conf, eligible, backend=backend)
        assert ranks.dtype == torch.int64 and ranks.shape == conf.shape
        expected = [rank_by_python(c.tolist(), e.tolist()) for c, e in zip(conf, eligible)]
        assert ranks.tolist() == expected
    empty = spiffy_triton.rank_positions(torch.zeros(0, 5), torch.zeros(0, 5, dtype=torch.bool))
    assert empty.shape == (0, 5)


def test_count_above_threshold():
    conf = torch.tensor([[0.95, 0.2, 0.91, 0.99], [0.3, 0.1, 0.2, 0.4], [0.99, 0.2, 0.5, 0.1]])
    eligible = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    assert contract.count_above_threshold(conf, eligible, 0.9).tolist() == [2, 1, 0]
    at_least_none = contract.count_above_threshold(conf, eligible, 0.9, at_least_one=False)
    assert at_least_none.tolist() == [2, 0, 0]
    ranks = ref.rank_positions(conf, eligible)
    assert ranks[0, :2].tolist() == [0, 2]  # the committed ones are the first `count` ranked
    from spiffy_triton.kernels import marginals as kernel_module

    assert kernel_module.count_above_threshold is contract.count_above_threshold


# ------------------------------------------------------------------------------------------
# Bad inputs (same message from both backends)
# ------------------------------------------------------------------------------------------


BAD_CALLS = [
    (lambda: (torch.randn(2, 3, 4), {}), ValueError, "2-D"),
    (lambda: (torch.randn(2, 3).long(), {}), TypeError, "dtype"),
    (lambda: (torch.randn(2, 0), {}), ValueError, "vocabulary of at least 1"),
    (lambda: ([[1.0]], {}), TypeError, "torch.Tensor"),
    (lambda: (torch.randn(2, 3), {"top_k": 0}), ValueError, "top_k"),
    (lambda: (torch.randn(2, 3), {"top_k": 9}), ValueError, "top_k"),
    (lambda: (torch.randn(2, 3), {"top_k": 2.0}), ValueError, "top_k"),
    (lambda: (torch.randn(2, 3), {"temperature": -0.1}), ValueError, "temperature"),
    (lambda: (torch.randn(2, 3), {"temperature": math.nan}), ValueError, "temperature"),
    (lambda: (torch.randn(2, 3), {"seed": -1}), ValueError, "seed"),
    (lambda: (torch.randn(2, 3), {"seed": 2**64}), ValueError, "seed"),
    (lambda: (torch.randn(2, 3), {"step": 2**32}), ValueError, "step"),
    (lambda: (torch.randn(2, 3), {"positions": torch.arange(3)}), ValueError, r"shape \[N\]"),
    (lambda: (torch.randn(2, 3), {"positions": torch.zeros(2)}), TypeError, "int32 or int64"),
    (lambda: (torch.randn(2, 3), {"positions": [0, 1]}), TypeError, "positions"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make, error, message", BAD_CALLS)
def test_bad_inputs(backend, make, error, message):
    logits, kwargs = make()
    with pytest.raises(error, match=message):
        run(logits, backend, **kwargs)


def test_float64_is_reference_only():
    logits = torch.randn(2, 5, dtype=torch.float64)
    assert run(logits, "torch").token.tolist() == logits.argmax(-1).tolist()
    with pytest.raises(TypeError, match="backend='torch' only"):
        run(logits, "triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_rank_bad_inputs(backend):
    conf = torch.rand(2, 4)
    cases = [
        ((conf, conf > 0.5), None),
        ((conf[0], conf[0] > 0.5), "2-D"),
        ((conf, (conf > 0.5).int()), "bool"),
        ((conf, conf[:, :3] > 0.5), "shape"),
        ((conf.long(), conf > 0.5), "floating"),
    ]
    for args, message in cases:
        if message is None:
            spiffy_triton.rank_positions(*args, backend=backend)
            continue
        with pytest.raises((ValueError, TypeError), match=message):
            spiffy_triton.rank_positions(*args, backend=backend)


# ------------------------------------------------------------------------------------------
# Kernel against reference (the shared cases of tests/parity_marginals.py, every device)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case, device", parity_params(cases_of("marginals")))
def test_marginals_parity(case, device):
    """Kernel vs reference on CPU (interpreter) and CUDA: small shapes with ties / -inf /
    strided rows, vocabularies 126464 and 152064 with 1 to 2048 rows (CUDA; one row of each
    at T = 0 and T = 0.7, default splits, in the interpreter), 262144, strided vocabulary,
    split invariance, the Philox stream, row packing, special rows and rank_positions."""
    case.run(device)


def test_default_config_splits_few_rows():
    from spiffy_triton.kernels import marginals as kernel_module

    assert kernel_module._select_config(32, 126464)["splits"] > 1
    assert kernel_module._select_config(288, 126464)["splits"] == 1
    assert kernel_module._select_config(4, 1000)["splits"] == 1


def test_kernel_gumbel_noise_matches_reference_to_a_few_ulps():
    """The words are bitwise equal; the fp32 Gumbel values are not bitwise equal, because the
    interpreter's log (numpy) and torch's log round differently in the last bit (measured: up
    to 9.5e-7 absolute, about a third of the values). On a GPU tl.log is another
    approximation again. Tokens still match exactly unless two scores are that close."""
    from spiffy_triton.kernels import marginals as kernel_module

    positions = torch.arange(8) * 7919
    actual = kernel_module.gumbel_noise(5, 3, positions, 4096).double()
    expected = contract.gumbel_noise(5, 3, positions, 4096).double()
    assert float((actual - expected).abs().max()) <= 2e-6


def test_kernel_noise_samples_follow_softmax():
    """Chi-square on the kernel's own noise: Gumbel-max over groups of 8 logits (2560 draws:
    a smoke test of the kernel's transform; the sized test is
    test_gumbel_chi_square_is_sized_for_a_temperature_error_of_0_01, on the same words)."""
    from spiffy_triton.kernels import marginals as kernel_module

    temperature = 0.6
    row = torch.tensor([0.3, -1.2, 2.0, 0.0, 1.1, -0.4, 0.9, 1.6])
    noise = kernel_module.gumbel_noise(21, 4, torch.arange(8), 8 * 2560).view(-1, 8)
    scores = row * contract.inverse_temperature(temperature) + noise
    tokens = scores.argmax(-1)
    observed = torch.bincount(tokens, minlength=8).double()
    expected = torch.softmax(row.double() / temperature, 0) * tokens.numel()
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi_square_p_value(chi2, dof=7) > 1e-3, f"chi2={chi2:.2f} (7 dof)"
