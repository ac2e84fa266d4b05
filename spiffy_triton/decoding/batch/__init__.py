"""Batched decoding: several prompts decoded together, each row exactly as it would be alone.

`generate_batch(model, prompts, ...)` (and `generate` given a list of prompts or a padded
``[B, P]`` tensor with ``lengths=``) runs one `generate` pipeline per row (its own settings,
step counter, noise keys, drafts, caches, statistics and auto budget), in lockstep: a row's
verifier calls the model through a proxy, every active row's model call of a round is
gathered, and calls that can share are evaluated in **one** model call (`ForwardBatcher`,
"Scope" below). A row whose block is done stops costing rows (it asks for a smaller forward, or
none); a finished row leaves the batch.

Each row's decoding is the B = 1 pipeline unchanged (only its model calls are merged), so its
tokens and NFE are B = 1's whenever the model gives a batch row the logits it gives that row
alone. It does for the package's models (tests/test_batch.py checks tokens and NFE per row):
every op is row-wise, and the cached forward takes a cache of one batch row per input row.

Scope. Calls of the package's models (`LLaDAModel` and its subclasses: LLaDA, Dream, SDAR) are
merged in every mode, so each call gets the arithmetic of its B = 1 call:

- a forward with a `SegmentLayout` (uncached ``verify="packed"`` with drafts, SDAR's
  block-causal forwards, every cached forward: ``cache="prefix"`` / ``"dual"``, packed or
  batch) is packed **varlen**: every batch row of every call is a run of segments of one
  sequence, blind to the others (NONE), at its own positions, visiting its keys in its own
  order; cached rows read one merged cache holding every row's cached keys (`merged_cache`).
  Rows of any prompt length and draft count share one call, and no padding row is computed.
  Exact because the attention's key tiles never cross a segment boundary
  (spiffy_triton/layout.py) and every other op is row-wise: measured bit-identical
  (docs/DECODING.md, "Batched decoding").
- a forward without a layout (uncached root-only and ``verify="batch"`` forwards: the model's
  plain SDPA, issue #21) shares with calls of the same sequence length: batch rows stacked.
  Packing those varlen would put them on the layout path, whose logits differ from SDPA's in
  the last bits (measured: up to 5.6e-5 in float32), so rows of different lengths run as
  separate calls of the round there.
- block-start prefills (one full SDPA forward) of the same shape share, their caches split
  per row (LLaDA, Dream; SDAR's incremental commit runs per row).

Other models (the Hugging Face adapter) and calls of other forms run one row at a time through
the same lockstep.

Auto budgets. ``max_drafts="auto"`` gives each row its own `AutoDraftBudget` (cost model from
the process cache, measured once; rates learned over the row's own run), not the process-wide
shared one, which concurrent rows would corrupt; pass a list of budgets (one per row) to keep
what they learn across calls. A shared forward's measured time is split between its rows by
each row's predicted cost (its budget's cost model at its verify shape; batch rows without a
budget), and the time a row waits for the others is kept apart (``time_s["batch_wait"]``), so
a row's budget sees the forward it would have made alone. The draft counts (so NFE) then
depend on timings; the tokens do not (Spiffy is lossless for any draft count in exact modes).

Modules, bottom to top: `rows` (a row, its requests, its proxy and verifier, `BatchRowStats`),
`budgets` (each row's ``max_drafts``), `layouts` (varlen packing of layouts), `caches` (the
rows' caches merged, stacked and split), `merging` (a group of calls as one model call),
`batcher` (`ForwardBatcher`: the lockstep rounds), `generate` (`generate_batch`,
`split_prompts`, `BatchGenerateOutput`).
"""

from .batcher import ForwardBatcher
from .generate import BatchGenerateOutput, generate_batch, split_prompts
from .rows import BatchRowStats

__all__ = ["BatchGenerateOutput", "BatchRowStats", "ForwardBatcher", "generate_batch"]
__all__ += ["split_prompts"]
