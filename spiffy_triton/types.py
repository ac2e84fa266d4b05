"""Result types shared by kernels and their references (no project imports)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class MarginalsOutput(NamedTuple):
    """Per-row summary of a logits row, as returned by `spiffy_triton.marginals`.

    token: int64 [N] chosen token (argmax at T = 0, Gumbel-max of logits / T at T > 0).
    prob: float32 [N] softmax probability (T = 1) of `token`: LLaDA's confidence.
    topk_tokens: int64 [N, k] highest-logit tokens, ties to the lowest vocab id.
    topk_probs: float32 [N, k] their softmax probabilities (T = 1).
    lse: float32 [N] log-sum-exp of the row (T = 1).
    entropy: float32 [N] entropy of softmax(row) in nats.
    """

    token: torch.Tensor
    prob: torch.Tensor
    topk_tokens: torch.Tensor
    topk_probs: torch.Tensor
    lse: torch.Tensor
    entropy: torch.Tensor
