"""Batched `generate` on the bundled model: model calls and CPU tokens/s at B = 1, 4, 16,
vanilla vs Spiffy (8-node default graph, every node verified), in a cache and verify mode.

    python benchmarks/batch.py [--quick] [--cache none|prefix|dual] [--verify batch|packed]
        [--max-drafts all|auto] [--mixed]

Prompts are two-term sums of one length (``"Q: a+b=?\\nA: "``, digits a, b), so every row's
forward has the same shape and the batch shares them (spiffy_triton/decoding/batch.py);
``--mixed`` makes every other prompt longer (varlen calls in the layout modes).
``forwards``: model calls the batch made; ``row_nfe``: the rows' NFE summed (what B separate
calls would make); ``rows_evaluated``: batch rows over the calls; ``tokens_per_s``: generated
tokens of all rows over the wall time of the batched call (one run: a shared machine's load
moves it). Every row's tokens are checked equal
across vanilla and Spiffy (lossless).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import spiffy_triton  # noqa: E402,F401  (sets the interpreter mode before triton is imported)
from benchmarks.timing import Results  # noqa: E402
from spiffy_triton import generate, load_model  # noqa: E402

GEN, BLOCK = 64, 32


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B = 1 and 4 only")
    parser.add_argument("--cache", choices=("none", "prefix", "dual"), default="none")
    parser.add_argument("--verify", choices=("batch", "packed"), default=None)
    parser.add_argument("--max-drafts", choices=("all", "auto"), default="all")
    parser.add_argument("--mixed", action="store_true", help="prompts of two lengths")
    args = parser.parse_args(argv)
    sizes = (1, 4) if args.quick else (1, 4, 16)
    model = load_model("tiny", dtype=torch.float32, backend="torch")
    cache = None if args.cache == "none" else args.cache
    verify = args.verify or ("batch" if cache is None else "packed")
    mode = dict(cache=cache, verify=verify)
    meta = dict(model="tiny", gen_length=GEN, block_length=BLOCK, **mode)
    meta.update(max_drafts=args.max_drafts, mixed=args.mixed)
    results = Results("batch", meta=meta)
    spiffy = dict(graph=8, max_drafts=None if args.max_drafts == "all" else "auto")
    for b in sizes:
        texts = [f"Q: {i % 9 + 1}+{(3 * i) % 9 + 1}=?\nA: " for i in range(b)]
        if args.mixed:
            texts = [t if i % 2 == 0 else t.replace("=?", "+10=?") for i, t in enumerate(texts)]
        prompts = [torch.tensor(model.tokenizer.encode(t)) for t in texts]
        tokens = {}
        for name, extra in (("vanilla", {}), ("spiffy", spiffy)):
            start = time.perf_counter()
            out = generate(model, prompts, gen_length=GEN, block_length=BLOCK, **mode, **extra)
            seconds = time.perf_counter() - start
            tokens[name] = out.tokens
            results.add(
                dict(
                    batch=b,
                    method=name,
                    forwards=out.forwards,
                    row_nfe=out.row_forwards,
                    rows_evaluated=out.rows_evaluated,
                    seconds=seconds,
                    tokens_per_s=b * GEN / seconds,
                    load_avg_1min=os.getloadavg()[0],
                )
            )
        assert all(torch.equal(a, s) for a, s in zip(tokens["vanilla"], tokens["spiffy"]))
    results.finish()


if __name__ == "__main__":
    main()
