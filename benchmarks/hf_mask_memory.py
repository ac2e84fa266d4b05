"""Memory of the attention mask of a verify forward at LLaDA-8B shapes: dense 4-D mask (what a
Hugging Face model's eager / SDPA attention needs) vs the segment layout (the
``"spiffy_graph"`` attention hook, spiffy_triton/models/hf_adapter.py).

    python -m benchmarks.hf_mask_memory [--quick]

For each verify shape (prompt 256 or 1024, 256 generated tokens, first block of 32, D packed
drafts, no cache / prefix cache / dual cache) it builds the tensors and counts their bytes
(``numel * element_size``):

- ``dense_bool``: the boolean ``[Mq, Mk]`` mask (`SegmentLayout.to_dense`);
- ``dense_additive``: the additive bf16 mask `HFDiffusionModel.additive_mask` builds for
  eager / SDPA (LLaDA-8B runs in bf16); one per forward, shared by the layers;
- ``layout``: the layout's tensors (`SegmentLayout.to_tensors`, what crosses the custom op);
- ``schedule``: the Triton kernel's tile schedule for the config it picks at LLaDA-8B's
  head_dim 128, bf16, 32 query heads = 32 key/value heads (`SegmentLayout.schedule`, int32,
  the device-side tensors the kernel reads);

and ``saved`` = dense_additive - (layout + schedule), ``ratio`` = dense_additive / (layout +
schedule). Shapes come from `spiffy_triton.decoding.cost_model.verify_shape` (checked against
the layout's rows).
"""

from __future__ import annotations

import torch

import spiffy_triton  # noqa: F401  (sets the interpreter mode before triton is imported)
from benchmarks import harness
from benchmarks.harness import Run
from spiffy_triton.decoding.cost_model import verify_shape
from spiffy_triton.decoding.verify import prefix_cache_layout
from spiffy_triton.kernels.graph_attention import select_config
from spiffy_triton.layout import SegmentLayout

GEN, BLOCK, HEAD_DIM, HEADS, DTYPE = 256, 32, 128, 32, torch.bfloat16


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def verify_layout(cache: str | None, s: int, length: int, t: int, d: int) -> SegmentLayout:
    if cache is None:
        return SegmentLayout.spiffy(s, length, t - s - length, d)
    if cache == "dual":
        return SegmentLayout.spiffy(s, length, t - s - length, d, cached=True)
    return prefix_cache_layout(s, t - s, d)


def measure(cache: str | None, prompt: int, drafts: int) -> dict:
    t, s = prompt + GEN, prompt
    layout = verify_layout(cache, s, BLOCK, t, drafts)
    shape = verify_shape(cache, "packed", s, BLOCK, t, drafts)
    assert (shape.rows, shape.keys) == (layout.num_q_rows, layout.num_k_rows), (shape, layout)
    dense = layout.to_dense()
    additive = torch.zeros(dense.shape, dtype=DTYPE).masked_fill_(~dense, torch.finfo(DTYPE).min)
    config = select_config(HEAD_DIM, DTYPE, layout.num_q_rows, 1)
    schedule = layout.schedule(config.block_m // config.heads_per_tile, config.block_n)
    sched_bytes = nbytes(
        schedule.tile_offsets,
        schedule.entries,
        schedule.row_segment,
        schedule.row_offset,
        schedule.visibility,
    )
    layout_bytes = nbytes(*layout.to_tensors())
    ours = layout_bytes + sched_bytes
    return dict(
        cache=cache or "none",
        prompt=prompt,
        drafts=drafts,
        mq=layout.num_q_rows,
        mk=layout.num_k_rows,
        dense_bool=nbytes(dense),
        dense_additive=nbytes(additive),
        layout=layout_bytes,
        schedule=sched_bytes,
        saved=nbytes(additive) - ours,
        ratio=nbytes(additive) / ours,
    )


def build_run(argv=None) -> Run:
    parser = harness.parser(__doc__, quick_help="prompt 256, D in 0 and 8 only")
    run = harness.build_run("hf_mask_memory", parser.parse_args(argv))
    if run.quick:
        return run.with_sizes(prompts=(256,), drafts=(0, 8))
    return run.with_sizes(prompts=(256, 1024), drafts=(0, 1, 3, 8, 16))


def main(argv=None) -> None:
    run = build_run(argv)
    meta = dict(
        model="LLaDA-8B verify shapes (bf16, head_dim 128, 32 heads, MHA)",
        generated=GEN,
        block=BLOCK,
        verify="packed, first block",
        units="bytes per verify forward (the mask is shared by the layers)",
    )
    results = run.table(key=("cache", "prompt", "drafts"), meta=meta)
    for cache in (None, "prefix", "dual"):
        for prompt in run.prompts:
            for d in run.drafts:
                results.add(measure(cache, prompt, d))
    results.finish()


if __name__ == "__main__":
    main()
