"""Pure-PyTorch twin of `kernels/marginals.py`: marginals and position ranks.

Semantics (the contract both backends implement; docs/MARGINALS.md has the full table):

- ``token``: argmax of the logits at ``temperature == 0``; at ``temperature > 0`` the argmax
  of ``logits * fp32(1 / T) + g`` (Gumbel-max), computed in float32, where ``g`` is the
  Gumbel noise of `spiffy_triton.contract.gumbel_noise`, keyed by ``(seed, step,
  positions[row], vocab id)``.
- ``prob``: softmax probability (T = 1) of ``token``; ``topk_tokens`` / ``topk_probs``: the
  ``top_k`` largest logits and their softmax probabilities; ``lse``: log-sum-exp;
  ``entropy``: entropy of softmax(row) in nats.
- Ranking (argmax, Gumbel argmax, top-k) is exact: values compare as IEEE numbers with
  ``-0.0 == +0.0``, NaN above ``+inf``, ties to the lowest vocab id.
- A row with a NaN: token = the lowest NaN id, every float output NaN. A row with ``+inf``
  (and no NaN): token = the lowest ``+inf`` id, ``lse = +inf``, probabilities and entropy
  NaN. A row that is all ``-inf``: token 0, probabilities 0, ``lse = -inf``, entropy 0.
- ``top_k > V``: slots past V hold token -1 and probability 0.

Limits, validation, the Philox stream and the ranking sentinel are the contract's
(`spiffy_triton/contract.py`); this module is only the twin.
"""

from __future__ import annotations

import math

import torch

from spiffy_triton.contract import (
    KEY_SENTINEL,
    MASK32,
    MAX_VOCAB,
    gumbel_noise,
    inverse_temperature,
    validate_marginals_args,
    validate_rank_args,
)
from spiffy_triton.types import MarginalsOutput

# --------------------------------------------------------------------------------------------
# Exact ranking keys
# --------------------------------------------------------------------------------------------


def ordered_key(values: torch.Tensor) -> torch.Tensor:
    """An integer key with the order of the IEEE values: -0 == +0, NaN above +inf.

    int64 key of the float32 bits for float16 / bfloat16 / float32 (all exact in float32),
    of the float64 bits for float64.
    """
    if values.dtype == torch.float64:
        int_dtype, flip, nan_key = torch.int64, 0x7FFFFFFFFFFFFFFF, 2**63 - 1
    else:
        values = values.to(torch.float32)
        int_dtype, flip, nan_key = torch.int32, 0x7FFFFFFF, 2**31 - 1
    values = torch.where(values == 0, torch.zeros_like(values), values)
    bits = values.view(int_dtype)
    key = torch.where(bits < 0, bits ^ flip, bits)
    key = torch.where(torch.isnan(values), torch.full_like(key, nan_key), key)
    return key.to(torch.int64)


def _top_ids(key: torch.Tensor, count: int, key_is_32_bit: bool) -> torch.Tensor:
    """Ids of the `count` largest keys per row, ties to the lowest id, in rank order."""
    vocab = key.shape[-1]
    if key_is_32_bit:
        ids = torch.arange(vocab, device=key.device, dtype=torch.int64)
        packed = (key << 32) | (MAX_VOCAB - ids)  # unique: topk order is exact
        return MAX_VOCAB - (torch.topk(packed, count, dim=-1).values & MASK32)
    return torch.sort(key, dim=-1, descending=True, stable=True).indices[..., :count]


# --------------------------------------------------------------------------------------------
# marginals
# --------------------------------------------------------------------------------------------


def marginals(logits, *, top_k=1, temperature=0.0, seed=0, step=0, positions=None):
    """Reference of `spiffy_triton.marginals` (see the module docstring for the semantics)."""
    positions = validate_marginals_args(logits, top_k, temperature, seed, step, positions)
    num_rows, vocab = logits.shape
    device = logits.device
    k_real = min(top_k, vocab)

    values = logits.detach()
    compute = values.to(torch.float64 if values.dtype == torch.float64 else torch.float32)
    key_is_32_bit = compute.dtype == torch.float32
    topk_tokens = _top_ids(ordered_key(compute), k_real, key_is_32_bit)

    if temperature > 0:
        inv_t = inverse_temperature(temperature)
        tokens = torch.empty(num_rows, dtype=torch.int64, device=device)
        # Chunk the rows so the int64 Philox temporaries stay bounded.
        rows_per_chunk = max(1, (1 << 22) // vocab)
        for start in range(0, num_rows, rows_per_chunk):
            stop = min(num_rows, start + rows_per_chunk)
            noise = gumbel_noise(seed, step, positions[start:stop], vocab).to(compute.dtype)
            scores = compute[start:stop] * inv_t + noise
            tokens[start:stop] = _top_ids(ordered_key(scores), 1, key_is_32_bit)[:, 0]
    else:
        tokens = topk_tokens[:, 0].clone()

    # Softmax statistics in float64 on the finite / -inf part; +inf and NaN poison the row.
    x = compute.to(torch.float64)
    is_nan = torch.isnan(x)
    is_pinf = torch.isposinf(x)
    row_nan = is_nan.any(dim=-1)
    row_poisoned = row_nan | is_pinf.any(dim=-1)
    clean = torch.where(is_nan | is_pinf, torch.full_like(x, -math.inf), x)
    row_max = clean.amax(dim=-1) if vocab else torch.full((num_rows,), -math.inf)
    has_mass = row_max > -math.inf
    shift = torch.where(has_mass, row_max, torch.zeros_like(row_max))
    exp_shifted = torch.exp(clean - shift[:, None])
    total = exp_shifted.sum(dim=-1)
    lse = torch.where(has_mass, shift + torch.log(total), torch.full_like(shift, -math.inf))
    p = torch.exp(clean - torch.where(has_mass, lse, torch.zeros_like(lse))[:, None])
    p = torch.where(has_mass[:, None], p, torch.zeros_like(p))
    plogp = torch.where(p > 0, p * (clean - lse[:, None]), torch.zeros_like(p))
    entropy = 0.0 - plogp.sum(dim=-1)  # 0.0 - keeps an empty sum at +0.0

    nan = torch.full_like(lse, math.nan)
    lse = torch.where(row_nan, nan, torch.where(row_poisoned, torch.full_like(lse, math.inf), lse))
    entropy = torch.where(row_poisoned, nan, entropy)

    def prob_of(ids: torch.Tensor) -> torch.Tensor:
        chosen = p.gather(1, ids)
        return torch.where(row_poisoned[:, None], nan[:, None].expand_as(chosen), chosen)

    prob = prob_of(tokens[:, None])[:, 0]
    topk_probs = prob_of(topk_tokens)
    if k_real < top_k:  # top_k > V: pad with token -1, probability 0
        pad = top_k - k_real
        topk_tokens = torch.cat(
            [topk_tokens, torch.full((num_rows, pad), -1, dtype=torch.int64, device=device)], 1
        )
        topk_probs = torch.cat([topk_probs, torch.zeros((num_rows, pad), device=device)], 1)

    return MarginalsOutput(
        token=tokens.contiguous(),
        prob=prob.to(torch.float32),
        topk_tokens=topk_tokens.contiguous(),
        topk_probs=topk_probs.to(torch.float32).contiguous(),
        lse=lse.to(torch.float32),
        entropy=entropy.to(torch.float32),
    )


# --------------------------------------------------------------------------------------------
# Position ranking
# --------------------------------------------------------------------------------------------


def rank_positions(confidence, eligible):
    """Positions per row (int64 [G, L]) in descending confidence, ties to the lower position,
    ineligible positions last (in position order). NaN confidence ranks with -inf."""
    validate_rank_args(confidence, eligible)
    if confidence.dtype != torch.float64:
        confidence = confidence.to(torch.float32)
    conf = torch.where(torch.isnan(confidence), torch.full_like(confidence, -math.inf), confidence)
    key = ordered_key(conf)
    key = torch.where(eligible, key, torch.full_like(key, KEY_SENTINEL))
    return torch.sort(key, dim=-1, descending=True, stable=True).indices
