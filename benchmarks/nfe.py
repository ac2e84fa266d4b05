"""Forward passes (NFE) of Spiffy against vanilla decoding on the bundled trained model.

MEASURED, hardware-independent (NFE is the paper's own metric). Held-out prompts of every
kind (`spiffy_triton.training.tinydata.heldout_prompts`; by default the kinds the model
answers right, arith and word), one token per step, block 32, 96 generated tokens (prompt +
answer of the bundled model's training data fit in 160 positions). Per cache mode (None:
drafts verified as batch rows, exact; "dual": packed, exact):

1. Spiffy with the default graphs of D in {3, 5, 8, 10}, and with graphs of the same D
   calibrated on `--calibration` prompts per kind of the calibration split (vanilla traces
   of the same cache and rule): NFE speedup over 1-token vanilla (total vanilla NFE / total
   Spiffy NFE over all prompts);
2. Fast-dLLM threshold rules tau in {0.9, 0.8, 0.7}: NFE reduction of the threshold rule alone,
   and of threshold + Spiffy (D = 8), both against 1-token vanilla;
3. without cache, the packed layout (near-lossless: context rows see the root, not the draft):
   how many outputs differ from vanilla's.

Every Spiffy run is compared token for token with the vanilla run of the same rule; the
`mismatches` column counts prompts whose output differs (0 expected in the exact modes).

    python -m benchmarks.nfe [--quick] [--per-kind 4] [--caches none,dual] [--kinds arith,word]
                              [--calibration 10] [--dtype float32]

Writes benchmarks/results/nfe.json.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence

import torch

from benchmarks import harness
from benchmarks.harness import Run
from spiffy_triton import generate, load_model
from spiffy_triton.calibration import collect_traces, select_graph
from spiffy_triton.training.tinydata import KINDS, calibration_prompts, heldout_prompts

# LLaDA-8B figures of the paper (arXiv 2509.18085), for the side-by-side column.
PAPER = {
    ("spiffy", 8): "2.74-3.00x (LLaDA-8B, D=8)",
    ("threshold+spiffy", 0.7): "7.88x (LLaDA-8B, tau=0.7 + Spiffy)",
}


def decode_one(model, prompt, *, cache, gen_length, block_length, **kwargs):
    kwargs.setdefault("max_drafts", None)  # fixed D: every node of the graph, no cost model
    return generate(
        model,
        prompt,
        gen_length=gen_length,
        block_length=block_length,
        cache=cache,
        backend="torch",
        **kwargs,
    )


def summary_row(section, outs, reference, *, cache, verify, vanilla_nfe, drafts, tau) -> dict:
    """One table row: total NFE of `outs` against 1-token vanilla, and how many outputs differ
    from `reference` (the vanilla run of the same rule)."""
    nfe = sum(o.nfe for o in outs)
    pairs = list(zip(outs, reference, strict=True))
    key = (section, drafts) if tau is None else (section, tau)
    return {
        "section": section,
        "cache": cache,
        "verify": verify,
        "temperature": 0,
        "threshold": tau,
        "drafts": drafts,
        "prompts": len(outs),
        "vanilla_nfe": vanilla_nfe,
        "nfe": nfe,
        "nfe_speedup": vanilla_nfe / nfe,
        "steps_per_nfe": sum(o.steps for o in outs) / nfe,
        "mismatches": sum(not torch.equal(o.tokens, r.tokens) for o, r in pairs),
        "tokens_differing": sum(int((o.tokens != r.tokens).sum()) for o, r in pairs),
        "paper": PAPER.get(key, ""),
    }


COLUMNS = (
    "section", "cache", "verify", "threshold", "drafts", "prompts", "nfe", "nfe_speedup",
    "steps_per_nfe", "mismatches", "tokens_differing", "paper",
)  # fmt: skip
KEY = ("section", "cache", "threshold", "drafts")


def build_run(argv: Sequence[str] | None = None) -> Run:
    parser = harness.parser(__doc__, quick_help="1 prompt per kind, 64 tokens")
    parser.add_argument("--per-kind", type=int, default=4, help="held-out prompts per kind")
    parser.add_argument("--gen-length", type=int, default=96)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--drafts", type=harness.int_list, default="3,5,8,10")
    parser.add_argument("--taus", type=harness.float_list, default="0.9,0.8,0.7")
    parser.add_argument("--threshold-drafts", type=int, default=8)
    parser.add_argument("--caches", type=harness.str_list, default="none,dual")
    parser.add_argument(
        "--kinds", type=harness.str_list, default="arith,word", help="tinydata.KINDS"
    )
    parser.add_argument(
        "--calibration", type=int, default=10, help="calibration prompts per kind (0: none)"
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = parser.parse_args(argv)
    for kind in args.kinds:
        if kind not in KINDS:
            parser.error(f"--kinds: {kind!r} is not one of {KINDS}")
    run = harness.build_run("nfe", args, caches=[None if c == "none" else c for c in args.caches])
    return run.with_sizes(per_kind=1, gen_length=64, calibration=1) if run.quick else run


def cache_rows(model, prompts, calibration, cache, run: Run) -> list[dict]:
    """Every row of one cache mode: vanilla, Spiffy, calibrated, threshold (+ Spiffy), and
    without cache the packed near-lossless layout."""
    shape = {"gen_length": run.gen_length, "block_length": run.block_length}
    cache_name, verify = cache or "none", "batch" if cache is None else "packed"

    def decode(**kwargs):
        return [decode_one(model, p, cache=cache, **shape, **kwargs) for _, p in prompts]

    def say(what):
        print(f"[nfe] cache={cache_name} {what}: {rows[-1]['nfe_speedup']:.2f}x", flush=True)

    vanilla = decode()
    row = functools.partial(summary_row, cache=cache_name, vanilla_nfe=sum(o.nfe for o in vanilla))
    rows = [row("vanilla", vanilla, vanilla, verify="-", drafts=0, tau=None)]
    for d in run.drafts:
        rows.append(row("spiffy", decode(graph=d), vanilla, verify=verify, drafts=d, tau=None))
        say(f"D={d}")
    if calibration:  # graphs calibrated on vanilla traces of the calibration split, same rule
        traces = collect_traces(model, calibration, cache=cache, backend="torch", **shape)
        for d in run.drafts:
            outs = decode(graph=select_graph(traces, d))
            rows.append(row("calibrated", outs, vanilla, verify=verify, drafts=d, tau=None))
            say(f"calibrated D={d}")
    d = run.threshold_drafts
    for tau in run.taus:
        thr = decode(threshold=tau)
        rows.append(row("threshold", thr, thr, verify="-", drafts=0, tau=tau))
        outs = decode(threshold=tau, graph=d)
        rows.append(row("threshold+spiffy", outs, thr, verify=verify, drafts=d, tau=tau))
        say(f"tau={tau}")
    if cache is None:
        outs = decode(graph=d, verify="packed")
        rows.append(row("packed-near-lossless", outs, vanilla, verify="packed", drafts=d, tau=None))
    return rows


def measure(run: Run) -> tuple[list[dict], dict]:
    """The rows of every cache mode, and the meta of the run."""
    model = load_model("tiny", dtype=getattr(torch, run.dtype), backend="torch")
    tok = model.tokenizer
    prompts = [
        (kind, torch.tensor([tok.encode(e.prompt)]))
        for kind, examples in heldout_prompts(run.per_kind).items()
        if kind in run.kinds
        for e in examples
    ]
    calibration = [
        e.prompt
        for k, v in calibration_prompts(run.calibration).items()
        if k in run.kinds
        for e in v
    ]
    start = time.perf_counter()
    rows = [
        row for cache in run.caches for row in cache_rows(model, prompts, calibration, cache, run)
    ]
    meta = {
        "model": "bundled tiny (spiffy_triton/assets/tiny)",
        "dtype": run.dtype,
        "prompts_per_kind": run.per_kind,
        "kinds": sorted({k for k, _ in prompts}),
        "rule": "LLaDA low-confidence, 1 token per step, temperature 0; threshold rows: "
        "Fast-dLLM threshold",
        "graphs": "spiffy: DraftGraph.default(D); calibrated: select_graph (objective 'steps') "
        "on vanilla traces of the calibration split (same kinds, same cache and rule)",
        "calibration_prompts": len(calibration),
        "nfe_speedup": "total 1-token vanilla NFE / total NFE of the row, same prompts and cache",
        "seconds": time.perf_counter() - start,
        "gen_length": run.gen_length,
        "block_length": run.block_length,
    }
    return rows, meta


def main(argv: Sequence[str] | None = None) -> int:
    run = build_run(argv)
    rows, meta = measure(run)
    run.report(rows, COLUMNS, key=KEY, meta=meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
