"""Batched `generate` on the bundled model: model calls and CPU tokens/s at B = 1, 4, 16,
vanilla vs Spiffy (8-node default graph), in each cache / verify mode, side by side.

    python -m benchmarks.batch [--quick] [--modes none/batch,dual/packed]
        [--max-drafts all|auto] [--mixed]

Prompts are two-term sums (``"Q: a+b=?\\nA: "``, digits a, b); ``--mixed`` makes every other
prompt longer (varlen calls in the layout modes, spiffy_triton/decoding/batch/).
``forwards``: model calls the batch made; ``row_nfe``: the rows' NFE summed (what B separate
calls would make); ``rows_evaluated``: batch rows over the calls; ``tokens_per_s``: generated
tokens of all rows over the wall time of the batched call (one run each; ``load_avg_1min``
says how busy the machine was). Every row's tokens are checked equal across vanilla and
Spiffy (lossless).
"""

from __future__ import annotations

import os
import time

import torch

import spiffy_triton  # noqa: F401  (sets the interpreter mode before triton is imported)
from benchmarks import harness
from spiffy_triton import generate, load_model

GEN, BLOCK = 64, 32


def _parse(argv):
    parser = harness.parser(__doc__, quick_help="B = 1 and 4 only")
    parser.add_argument("--modes", type=harness.str_list, default=["none/batch", "dual/packed"])
    parser.add_argument("--max-drafts", choices=("all", "auto"), default="all")
    parser.add_argument("--mixed", action="store_true", help="prompts of two lengths")
    return harness.build_run("batch", parser.parse_args(argv))


def _prompts(model, b: int, mixed: bool) -> list[torch.Tensor]:
    texts = [f"Q: {i % 9 + 1}+{(3 * i) % 9 + 1}=?\nA: " for i in range(b)]
    if mixed:
        texts = [t if i % 2 == 0 else t.replace("=?", "+10=?") for i, t in enumerate(texts)]
    return [torch.tensor(model.tokenizer.encode(t)) for t in texts]


def _measure(model, prompts, mode: str, name: str, extra: dict):
    cache, verify = mode.split("/")
    kwargs = dict(cache=None if cache == "none" else cache, verify=verify)
    start = time.perf_counter()
    out = generate(model, prompts, gen_length=GEN, block_length=BLOCK, **kwargs, **extra)
    seconds = time.perf_counter() - start
    row = dict(
        mode=mode,
        batch=len(prompts),
        method=name,
        forwards=out.forwards,
        row_nfe=out.row_forwards,
        rows_evaluated=out.rows_evaluated,
        seconds=seconds,
        tokens_per_s=len(prompts) * GEN / seconds,
        load_avg_1min=os.getloadavg()[0],
    )
    return row, out.tokens


def main(argv=None) -> None:
    run = _parse(argv)
    model = load_model("tiny", dtype=torch.float32, backend="torch")
    meta = dict(model="tiny", gen_length=GEN, block_length=BLOCK)
    meta.update(max_drafts=run.max_drafts, mixed=run.mixed)
    results = run.table(key=("mode", "batch", "method"), meta=meta)
    spiffy = dict(graph=8, max_drafts=None if run.max_drafts == "all" else "auto")
    for mode in run.modes:
        for b in (1, 4) if run.quick else (1, 4, 16):
            prompts = _prompts(model, b, run.mixed)
            tokens = {}
            for name, extra in (("vanilla", {}), ("spiffy", spiffy)):
                row, tokens[name] = _measure(model, prompts, mode, name, extra)
                results.add(row)
            assert all(torch.equal(a, s) for a, s in zip(tokens["vanilla"], tokens["spiffy"]))
    results.finish()


if __name__ == "__main__":
    main()
