"""Batched `generate` on the bundled model: model calls and CPU tokens/s at B = 1, 4, 16,
vanilla vs Spiffy (8-node default graph, every node verified), no cache.

    python -m benchmarks.batch [--quick]

Prompts are two-term sums of one length (``"Q: a+b=?\\nA: "``, digits a, b), so every row's
forward has the same shape and the batch shares them (spiffy_triton/decoding/batch.py).
``forwards``: model calls the batch made; ``row_nfe``: the rows' NFE summed (what B separate
calls would make); ``tokens_per_s``: generated tokens of all rows over the wall time of the
batched call (one run: a shared machine's load moves it). Every row's tokens are checked equal
across vanilla and Spiffy (lossless).
"""

from __future__ import annotations

import os
import time

import torch

import spiffy_triton  # noqa: F401  (sets the interpreter mode before triton is imported)
from benchmarks import harness
from spiffy_triton import generate, load_model

GEN, BLOCK = 64, 32


def main(argv=None) -> None:
    run = harness.build_run(
        "batch", harness.parser(__doc__, quick_help="B = 1 and 4 only").parse_args(argv)
    )
    sizes = (1, 4) if run.quick else (1, 4, 16)
    model = load_model("tiny", dtype=torch.float32, backend="torch")
    meta = dict(model="tiny", gen_length=GEN, block_length=BLOCK, cache=None, verify="batch")
    results = run.table(key=("batch", "method"), meta=meta)
    for b in sizes:
        texts = [f"Q: {i % 9 + 1}+{(3 * i) % 9 + 1}=?\nA: " for i in range(b)]
        prompts = [torch.tensor(model.tokenizer.encode(t)) for t in texts]
        tokens = {}
        for name, extra in (("vanilla", {}), ("spiffy", dict(graph=8, max_drafts=None))):
            start = time.perf_counter()
            out = generate(model, prompts, gen_length=GEN, block_length=BLOCK, **extra)
            seconds = time.perf_counter() - start
            tokens[name] = out.tokens
            results.add(
                dict(
                    batch=b,
                    method=name,
                    forwards=out.forwards,
                    row_nfe=out.row_forwards,
                    seconds=seconds,
                    tokens_per_s=b * GEN / seconds,
                    load_avg_1min=os.getloadavg()[0],
                )
            )
        assert all(torch.equal(a, s) for a, s in zip(tokens["vanilla"], tokens["spiffy"]))
    results.finish()


if __name__ == "__main__":
    main()
