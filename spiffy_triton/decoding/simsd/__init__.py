"""SimSD (reference-token speculative decoding for block-causal dLLMs) beside Spiffy.

``generate(model, ids, ..., method="simsd", draft="self" | model | DraftSource)``; the exact
variant is ``method="simsd-exact"``. See docs/DECODING.md (SimSD).

SimSD plugs into `generate`'s staged loop as two `DecodeMethod`s (`methods.py`): it *makes
drafts* (a `DraftSource`'s reference tokens), *verifies* them in a layout of its own
(`SegmentLayout.simsd`: one copy of the block plus ``m - 1`` reference rows) and *walks* by its
own acceptance (`accept_references`); the exact variant makes Spiffy-style candidate states from
the same references (`reference_chain`), verified by the model's Spiffy verifier and walked with
vanilla's rule (`walk_states`).
"""

from .accept import accept_references, reference_chain
from .draft import (
    DraftSource,
    ModelDraft,
    PreviousForwardDraft,
    Proposal,
    check_draft_model,
    resolve_draft,
)
from .methods import SIMSD_METHODS, SimSDExactMethod, SimSDMethod, SimSDStats, check_block_causal

__all__ = [
    "SIMSD_METHODS",
    "DraftSource",
    "ModelDraft",
    "PreviousForwardDraft",
    "Proposal",
    "SimSDExactMethod",
    "SimSDMethod",
    "SimSDStats",
    "accept_references",
    "check_block_causal",
    "check_draft_model",
    "reference_chain",
    "resolve_draft",
]
