"""Decoding (docs/DESIGN.md §2, §7, §8): the decode loop and what it is made of.

Bottom to top: `rules` (the transition rule ``R``), `drafting` / `noise_fill` / `pruning`
(filling graph formulas into the root), `cost_model` / `acceptance` / `selection` / `budget`
(the cost-aware draft budget of ``max_drafts="auto"``), `stats` and `verify` (the one forward
that evaluates a root and its drafts), `settings` (the arguments, checked once), `methods`
(vanilla and Spiffy as `DecodeMethod`s), `loop` (`generate`).
"""

from .loop import PHASES, DecodeStats, GenerateOutput, default_verify, generate, is_exact
from .settings import BlockLengthWarning

__all__ = [
    "PHASES",
    "BlockLengthWarning",
    "DecodeStats",
    "GenerateOutput",
    "default_verify",
    "generate",
    "is_exact",
]
