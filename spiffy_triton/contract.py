"""The contract of the marginals kernel and its PyTorch twin: what both must agree on.

Ground floor (imports only torch): `kernels/marginals.py`,
`reference/marginals.py`, the decoding rules, the noise-aware filler, the settings and the
calibration traces read it; neither twin defines any of it (docs/DESIGN.md §4).

- Limits: `MAX_TOP_K`, `MAX_VOCAB`, `SUPPORTED_DTYPES`.
- Validation: `validate_marginals_args`, `validate_rank_args` (both backends raise the same
  messages), `inverse_temperature` (the one fp32 rounding of 1 / T).
- Shared host-side rule: `count_above_threshold` (no kernel of its own).
- Ranking keys: a packed top-k key holds an order-preserving key of the value in its high word
  and ``MAX_VOCAB - id`` in its low word (ties to the lowest id); `KEY_SENTINEL` is below every
  real packed key (an empty slot, an ineligible position).
- The random stream, defined here by executable code (`philox_uint32`, `gumbel_noise`) that
  the kernels reproduce bit for bit: Philox4x32-10 with key ``(seed mod 2**32, seed >> 32)``
  and counter ``(c0, position mod 2**32, step, stream)``; vocabulary id ``v`` reads output word
  ``(v // 256) % 4`` of the counter ``c0 = (v // 1024) * 256 + v % 256`` (`noise_counter`:
  four ids share one Philox call, each lane of 256 ids contiguous so kernel loads stay
  contiguous). Gumbel noise uses stream `GUMBEL_STREAM`; decoders use others (random
  remasking).
"""

from __future__ import annotations

import math
import numbers

import torch

MAX_TOP_K = 8
MAX_VOCAB = 2**31 - 1  # ids fit the low word of a packed key as MAX_VOCAB - id >= 0
KEY_SENTINEL = -(2**63)  # below every real packed key

# Philox4x32-10 constants (Salmon et al., SC'11).
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
MASK32 = 0xFFFFFFFF

# Vocabulary id -> (counter word c0, output lane): lanes of LANE_SPAN contiguous ids.
LANE_SPAN = 256
LANES = 4
NOISE_CHUNK = LANES * LANE_SPAN
GUMBEL_STREAM = 0

# uint32 -> Gumbel: both halves of the 32-bit range map to a uniform with full relative
# precision near 0 (u) and near 1 (w = 1 - u), so the Exp(1) variate E = -log(u) is exact to
# fp32 rounding down to 2**-33 and the Gumbel tail reaches 33 ln 2 = 22.9 (docs/MARGINALS.md).
TWO_POW_M32 = 2.0**-32
SERIES_CUTOFF = 2.0**-7  # below it -log(1 - w) is evaluated by its series, not by log(1 - w)

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# --------------------------------------------------------------------------------------------
# Validation shared by the kernel launcher and the reference (identical messages).
# --------------------------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def validate_marginals_args(
    logits, top_k, temperature, seed, step, positions, *, float64_ok: bool = True
) -> torch.Tensor:
    """Check every argument of `marginals`; return positions as int64 [N] (arange if None)."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"marginals: logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(
            f"marginals: logits must be 2-D [N, V] (rows, vocabulary), got shape "
            f"{tuple(logits.shape)}; reshape [B, T, V] logits with logits.flatten(0, 1)"
        )
    if logits.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"marginals: logits dtype must be one of float16, bfloat16, float32 or float64, "
            f"got {logits.dtype}"
        )
    if logits.dtype == torch.float64 and not float64_ok:
        raise TypeError(
            "marginals: float64 logits are supported by backend='torch' only; the Triton "
            "kernel takes float16, bfloat16 or float32"
        )
    num_rows, vocab = logits.shape
    if vocab < 1:
        raise ValueError(f"marginals: logits must have a vocabulary of at least 1, got V={vocab}")
    if vocab > MAX_VOCAB:
        raise ValueError(f"marginals: vocabulary size V={vocab} exceeds {MAX_VOCAB}")
    if not _is_int(top_k) or not 1 <= top_k <= MAX_TOP_K:
        raise ValueError(f"marginals: top_k must be an int in [1, {MAX_TOP_K}], got {top_k!r}")
    if (
        not isinstance(temperature, numbers.Real)
        or isinstance(temperature, bool)
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise ValueError(
            f"marginals: temperature must be a finite real number >= 0, got {temperature!r}"
        )
    if not _is_int(seed) or not 0 <= seed < 2**64:
        raise ValueError(f"marginals: seed must be an int in [0, 2**64), got {seed!r}")
    if not _is_int(step) or not 0 <= step < 2**32:
        raise ValueError(f"marginals: step must be an int in [0, 2**32), got {step!r}")
    if positions is None:
        return torch.arange(num_rows, device=logits.device, dtype=torch.int64)
    if not isinstance(positions, torch.Tensor):
        raise TypeError(
            f"marginals: positions must be None or an integer tensor [N], got "
            f"{type(positions).__name__}"
        )
    if positions.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"marginals: positions must be int32 or int64, got {positions.dtype}")
    if tuple(positions.shape) != (num_rows,):
        raise ValueError(
            f"marginals: positions must have shape [N] = ({num_rows},) to match logits, got "
            f"{tuple(positions.shape)}"
        )
    if positions.device != logits.device:
        raise ValueError(
            f"marginals: positions must be on the device of logits ({logits.device}), got "
            f"{positions.device}"
        )
    return positions.to(torch.int64)


def validate_rank_args(confidence, eligible) -> None:
    """Check the arguments of `rank_positions` / `count_above_threshold`."""
    if not isinstance(confidence, torch.Tensor) or not isinstance(eligible, torch.Tensor):
        raise TypeError("rank_positions: confidence and eligible must be torch.Tensors")
    if confidence.dim() != 2:
        raise ValueError(
            f"rank_positions: confidence must be 2-D [G, L], got shape {tuple(confidence.shape)}"
        )
    if not confidence.dtype.is_floating_point:
        raise TypeError(
            f"rank_positions: confidence must be a floating tensor, got {confidence.dtype}"
        )
    if eligible.dtype != torch.bool:
        raise TypeError(f"rank_positions: eligible must be a bool tensor, got {eligible.dtype}")
    if eligible.shape != confidence.shape:
        raise ValueError(
            f"rank_positions: eligible must have the shape of confidence "
            f"{tuple(confidence.shape)}, got {tuple(eligible.shape)}"
        )
    if eligible.device != confidence.device:
        raise ValueError(
            f"rank_positions: eligible must be on the device of confidence "
            f"({confidence.device}), got {eligible.device}"
        )


def inverse_temperature(temperature: float) -> float:
    """The fp32 multiplier both backends apply to logits at T > 0 (1 / T rounded once)."""
    return float(torch.tensor(1.0 / temperature, dtype=torch.float32)) if temperature > 0 else 0.0


# --------------------------------------------------------------------------------------------
# Philox4x32-10 in int64 arithmetic masked to 32 bits.


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of a * b (a a 32-bit constant, b int64 in [0, 2**32)).

    The 64-bit product may wrap around in int64; both words are read back masked, and the
    Philox known-answer tests pin the result (tests/test_marginals.py).
    """
    product = b * a
    return (product >> 32) & MASK32, product & MASK32


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 of counters (int64 tensors holding uint32) under key (k0, k1)."""
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo32(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def noise_counter(vocab_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Philox counter word ``c0`` and the output lane that vocabulary ids read (int64)."""
    ids = vocab_ids.to(torch.int64)
    return (ids // NOISE_CHUNK) * LANE_SPAN + ids % LANE_SPAN, (ids // LANE_SPAN) % LANES


def philox_words_at(
    seed: int, step: int, positions: torch.Tensor, vocab_ids: torch.Tensor, stream: int
) -> torch.Tensor:
    """The 32-bit words (int64 ``[N, K]``) of ``(positions[n], vocab_ids[n, k])``: the entries
    of `philox_uint32` for just those ids."""
    counter0, lane = noise_counter(vocab_ids)
    device = counter0.device
    words = philox4x32_10(
        counter0,
        (positions.to(torch.int64) & MASK32)[:, None],
        torch.tensor(step & MASK32, dtype=torch.int64, device=device),
        torch.tensor(stream & MASK32, dtype=torch.int64, device=device),
        seed & MASK32,
        (seed >> 32) & MASK32,
    )
    return torch.stack(words, dim=-1).gather(-1, lane[..., None])[..., 0]


def philox_uint32(
    seed: int, step: int, positions: torch.Tensor, num_values: int, stream: int = GUMBEL_STREAM
) -> torch.Tensor:
    """The 32-bit random word of every (positions[row], vocab id < num_values): int64 [N, V].

    A pure function of (seed, step, position, vocab id, stream); rows are independent of how
    they are packed. `stream` separates independent uses (0 is the Gumbel noise of marginals;
    decoders may use others, e.g. for random remasking).
    """
    positions = positions.to(torch.int64)
    device = positions.device
    last = num_values - 1  # counters up to that of the last vocabulary id
    num_counters = (last // NOISE_CHUNK) * LANE_SPAN + min(LANE_SPAN - 1, last % NOISE_CHUNK) + 1
    counter0 = torch.arange(num_counters, device=device, dtype=torch.int64)
    words = philox4x32_10(
        counter0[None, :],
        (positions & MASK32)[:, None],
        torch.tensor(step & MASK32, dtype=torch.int64, device=device),
        torch.tensor(stream & MASK32, dtype=torch.int64, device=device),
        seed & MASK32,
        (seed >> 32) & MASK32,
    )
    # Vocabulary id v reads word (v // LANE_SPAN) % LANES of counter (v // NOISE_CHUNK) *
    # LANE_SPAN + v % LANE_SPAN: one Philox call serves four ids.
    counter_of_vocab, lane = noise_counter(torch.arange(num_values, device=device))
    flat_index = lane * num_counters + counter_of_vocab
    stacked = torch.cat(words, dim=1)  # [N, 4 * num_counters], word-major
    return stacked[:, flat_index]


def gumbel_from_uint32(bits: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise in float32 from 32-bit words (int64 tensor), as the kernel does."""
    upper = bits >= 2**31
    source = torch.where(upper, MASK32 - bits, bits).to(torch.float32)  # < 2**31, rounded
    v = (source + 0.5) * TWO_POW_M32  # u in the lower half, w = 1 - u in the upper half
    series = v * (1.0 + v * (0.5 + v * (1.0 / 3.0 + v * 0.25)))
    exp_upper = torch.where(v < SERIES_CUTOFF, series, -torch.log(1.0 - v))
    exponential = torch.where(upper, exp_upper, -torch.log(v))
    return -torch.log(exponential)


def gumbel_noise(
    seed: int, step: int, positions: torch.Tensor, num_values: int, stream: int = GUMBEL_STREAM
) -> torch.Tensor:
    """Gumbel noise float32 [N, V] keyed by (seed, step, positions[row], vocab id)."""
    return gumbel_from_uint32(philox_uint32(seed, step, positions, num_values, stream))


# --------------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------------
# The threshold rule both backends share (host-side, no kernel)
# --------------------------------------------------------------------------------------------


def count_above_threshold(confidence, eligible, threshold: float, *, at_least_one: bool = True):
    """Per row, how many ranked positions a threshold rule commits (int64 [G]).

    The count of eligible positions with confidence > `threshold` (Fast-dLLM); with
    `at_least_one`, rows with an eligible position but none above commit 1. With
    `rank_positions` the committed positions are the first `count` ranked ones.
    """
    validate_rank_args(confidence, eligible)
    if not isinstance(threshold, numbers.Real) or isinstance(threshold, bool):
        raise TypeError(
            f"count_above_threshold: threshold must be a real number, got {threshold!r}"
        )
    above = (eligible & (confidence > threshold)).sum(dim=-1)
    if at_least_one:
        any_eligible = eligible.any(dim=-1)
        above = torch.where(any_eligible & (above == 0), torch.ones_like(above), above)
    return above.to(torch.int64)
