"""What ``torch.compile`` costs and saves on the verify forward of the bundled model (CPU).

    python -m benchmarks.compile_verify [--quick]

The forward is the decoder's hot call: a packed dual-cache verify of the root block (32 rows)
and D drafts over a prompt of 64 tokens and 64 generated tokens (``SegmentLayout.spiffy(...,
cached=True)``), float32, attention through the custom op ``torch.ops.spiffy.graph_attention``
(torch backend) inside the compiled graph. For each D it reports: the first compiled call
(one-time compile seconds, ``fullgraph=True``: it raises on a graph break; inductor's on-disk
cache makes a second run's compile faster), the eager and compiled forwards (ms: medians, with
p20 / p50 / p80 beside them; timed alternately so that a shared machine's load hits both
alike), the speed-up, and the largest |logit difference| from eager with whether every row's
argmax agrees (inductor fuses and reorders float32 arithmetic, so bitwise equality is not
expected; the ``backend="eager"`` graph is bitwise equal, tests/test_ops.py). Each D compiles
afresh (``torch._dynamo.reset()``), as a new shape would.
"""

from __future__ import annotations

import os
import time

import torch

import spiffy_triton  # noqa: F401  (sets the interpreter mode before triton is imported)
from benchmarks import harness
from benchmarks.harness import Run
from benchmarks.timing import percentiles
from spiffy_triton import SegmentLayout, load_model

PROMPT, GEN, BLOCK = 64, 64, 32


def verify_inputs(model, drafts: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.embedding_size
    x = torch.randint(0, vocab - 1, (1, PROMPT + GEN), generator=gen)
    s, e = PROMPT, PROMPT + BLOCK
    with torch.no_grad():
        _, cache = model.prefill(x, block_start=s, block_end=e, mode="dual")
    rows = torch.randint(0, vocab - 1, (drafts, BLOCK), generator=gen)
    ids = torch.cat([x[0, s:e], rows.reshape(-1)])[None]
    pos = torch.arange(s, e).repeat(1 + drafts)
    layout = SegmentLayout.spiffy(s, BLOCK, x.shape[1] - e, drafts, cached=True)
    return dict(input_ids=ids, position_ids=pos, layout=layout, cache=cache)


def interleaved_ms(first, second, reps: int) -> tuple[dict, dict]:
    """p20_ms / p50_ms / p80_ms of each, timed alternately (a shared machine's load hits both
    alike)."""
    times: tuple[list, list] = ([], [])
    for rep in range(reps + 2):
        for fn, out in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            if rep >= 2:  # two warm-up rounds
                out.append((time.perf_counter() - start) * 1e3)
    return percentiles(times[0]), percentiles(times[1])


def build_run(argv=None) -> Run:
    parser = harness.parser(__doc__, quick_help="D = 3 only, fewer repetitions")
    run = harness.build_run("compile_verify", parser.parse_args(argv))
    return run.with_sizes(drafts=(3,) if run.quick else (0, 3, 8), reps=5 if run.quick else 20)


def measure_row(model, d: int, reps: int) -> dict:
    """Compile the verify forward of `d` drafts afresh; time eager and compiled alternately."""
    inputs = verify_inputs(model, d)
    torch._dynamo.reset()
    with torch.no_grad():
        eager = model(**inputs)
        compiled = torch.compile(model, fullgraph=True)
        start = time.perf_counter()
        got = compiled(**inputs)
        compile_s = time.perf_counter() - start
        eager_t, compiled_t = interleaved_ms(
            lambda kw=inputs: model(**kw), lambda kw=inputs, f=compiled: f(**kw), reps
        )
    eager_ms, compiled_ms = eager_t["p50_ms"], compiled_t["p50_ms"]
    return dict(
        drafts=d,
        query_rows=int(inputs["input_ids"].shape[1]),
        eager_ms=eager_ms,
        compile_s=compile_s,
        compiled_ms=compiled_ms,
        speedup=eager_ms / compiled_ms,
        breakeven_forwards=compile_s * 1e3 / max(eager_ms - compiled_ms, 1e-9)
        if eager_ms > compiled_ms
        else None,
        max_abs_diff=float((got - eager).abs().max()),
        argmax_equal=bool(torch.equal(got.argmax(-1), eager.argmax(-1))),
        load_avg_1min=os.getloadavg()[0],
        **{f"eager_{k}": v for k, v in eager_t.items()},
        **{f"compiled_{k}": v for k, v in compiled_t.items()},
    )


def main(argv=None) -> None:
    run = build_run(argv)
    model = load_model("tiny", dtype=torch.float32, backend="torch")
    meta = dict(
        model="tiny (bundled LLaDA-style, 1.66M parameters)",
        forward=f"packed dual-cache verify: prompt {PROMPT}, gen {GEN}, block {BLOCK}, D drafts",
        compile="torch.compile(model, fullgraph=True) (inductor, CPU)",
        threads=torch.get_num_threads(),
        timing="medians of eager and compiled calls timed alternately (after 2 warm-up rounds); "
        "eager_/compiled_ p20_ms / p50_ms / p80_ms beside them",
    )
    results = run.table(key=("drafts",), meta=meta)
    for d in run.drafts:
        results.add(measure_row(model, d, run.reps))
    results.finish()


if __name__ == "__main__":
    main()
