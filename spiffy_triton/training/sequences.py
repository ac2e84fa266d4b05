"""What the trainer, the evaluation and the model cards share about training sequences: their
length, the generation tail and SDAR block they are shaped for, the answer digits' loss weight,
and how examples become a batch. Imports only the data (`tinydata`), so the three import it and
not each other (`train_tiny` -> `evaluate` -> `card`, no way back).
"""

from __future__ import annotations

import torch

from ..models import CharTokenizer
from . import tinydata

MAX_LENGTH = 160
# Tokens the main job generates after a prompt (demo, nfe): a share of the batches is padded
# this far past their longest prompt, so that the EOS tail the decoder sees is trained.
GEN_LENGTH = 96
LONG_PAD_SHARE = 0.15
SDAR_BLOCK = 16
# Answer digits weigh this much more in the loss: they carry the task (the sums), while most
# answer tokens are copies of the prompt, format and EOS padding, learnt early. A per-token
# weight moves gradient, not the optimum of each token's conditional.
DIGIT_WEIGHT = 4.0


def make_batch(
    examples: list[tinydata.Example], tokenizer: CharTokenizer, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[B, length]`` (answers padded with EOS) and the prompt lengths ``[B]``."""
    ids = torch.full((len(examples), length), tokenizer.eos_token_id, dtype=torch.long)
    prompt_lengths = torch.empty(len(examples), dtype=torch.long)
    for row, example in enumerate(examples):
        prompt = tokenizer.encode(example.prompt)
        text = prompt + tokenizer.encode(example.answer)
        if len(text) > length:
            raise ValueError(f"example of {len(text)} tokens does not fit length {length}")
        ids[row, : len(text)] = torch.tensor(text)
        prompt_lengths[row] = len(prompt)
    return ids, prompt_lengths
