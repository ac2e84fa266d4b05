"""SimSD (reference-token speculative decoding for block-causal dLLMs) beside Spiffy.

``generate(model, ids, ..., method="simsd", draft="self" | model | DraftSource)``; the exact
variant is ``method="simsd-exact"``. See docs/DECODING.md (SimSD).

How it maps onto a staged decode loop: SimSD is a way to *make drafts* (a `DraftSource`'s
reference tokens) and a *verify layout* for them (`SegmentLayout.simsd`: one copy of the block
plus ``m - 1`` reference rows) with its own acceptance (`accept_references`); the exact variant
makes Spiffy-style candidate states from the same references (`reference_chain`), verified by
the model's Spiffy verifier and walked with vanilla's rule (`walk`).
"""

from .accept import accept_references, reference_chain, walk
from .draft import (
    DraftSource,
    ModelDraft,
    PreviousForwardDraft,
    Proposal,
    check_draft_model,
    resolve_draft,
)
from .loop import SIMSD_METHODS, SimSDStats, check_block_causal, simsd_generate

__all__ = [
    "SIMSD_METHODS",
    "DraftSource",
    "ModelDraft",
    "PreviousForwardDraft",
    "Proposal",
    "SimSDStats",
    "accept_references",
    "check_block_causal",
    "check_draft_model",
    "reference_chain",
    "resolve_draft",
    "simsd_generate",
    "walk",
]
