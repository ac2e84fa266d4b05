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

import argparse
import functools
import time
from collections.abc import Sequence

import torch

from benchmarks.timing import report
from spiffy_triton import generate, load_model
from spiffy_triton.calibration import collect_traces, select_graph
from spiffy_triton.training.tinydata import KINDS, calibration_prompts, heldout_prompts

# LLaDA-8B figures of the paper (arXiv 2509.18085), for the side-by-side column.
PAPER = {
    ("spiffy", 8): "2.74-3.00x (LLaDA-8B, D=8)",
    ("threshold+spiffy", 0.7): "7.88x (LLaDA-8B, tau=0.7 + Spiffy)",
}


def parse_list(text: str, kind):
    return [kind(item) for item in text.split(",") if item.strip()]


def run(model, prompt, *, cache, gen_length, block_length, **kwargs):
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 prompt per kind, 64 tokens")
    parser.add_argument("--per-kind", type=int, default=4, help="held-out prompts per kind")
    parser.add_argument("--gen-length", type=int, default=96)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--drafts", default="3,5,8,10")
    parser.add_argument("--taus", default="0.9,0.8,0.7")
    parser.add_argument("--threshold-drafts", type=int, default=8)
    parser.add_argument("--caches", default="none,dual")
    parser.add_argument("--kinds", default="arith,word", help="held-out kinds (tinydata.KINDS)")
    parser.add_argument(
        "--calibration", type=int, default=10, help="calibration prompts per kind (0: none)"
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.per_kind, args.gen_length, args.calibration = 1, 64, 1
    kinds = parse_list(args.kinds, str)
    for kind in kinds:
        if kind not in KINDS:
            parser.error(f"--kinds: {kind!r} is not one of {KINDS}")
    drafts = parse_list(args.drafts, int)
    taus = parse_list(args.taus, float)
    caches = [None if c == "none" else c for c in parse_list(args.caches, str)]

    model = load_model("tiny", dtype=getattr(torch, args.dtype), backend="torch")
    tok = model.tokenizer
    prompts = [
        (kind, torch.tensor([tok.encode(e.prompt)]))
        for kind, examples in heldout_prompts(args.per_kind).items()
        if kind in kinds
        for e in examples
    ]
    calibration = [
        e.prompt for k, v in calibration_prompts(args.calibration).items() if k in kinds for e in v
    ]
    shape = {"gen_length": args.gen_length, "block_length": args.block_length}
    start = time.perf_counter()
    rows = []
    for cache in caches:
        cache_name = cache or "none"
        verify = "batch" if cache is None else "packed"
        vanilla = [run(model, p, cache=cache, **shape) for _, p in prompts]
        v_nfe = sum(o.nfe for o in vanilla)

        row = functools.partial(summary_row, cache=cache_name, vanilla_nfe=v_nfe)
        rows.append(row("vanilla", vanilla, vanilla, verify="-", drafts=0, tau=None))
        for d in drafts:
            outs = [run(model, p, cache=cache, graph=d, **shape) for _, p in prompts]
            rows.append(row("spiffy", outs, vanilla, verify=verify, drafts=d, tau=None))
            print(f"[nfe] cache={cache_name} D={d}: {rows[-1]['nfe_speedup']:.2f}x", flush=True)
        if calibration:
            # Graphs calibrated on vanilla traces of the calibration split, same settings.
            traces = collect_traces(model, calibration, cache=cache, backend="torch", **shape)
            for d in drafts:
                graph = select_graph(traces, d)
                outs = [run(model, p, cache=cache, graph=graph, **shape) for _, p in prompts]
                rows.append(row("calibrated", outs, vanilla, verify=verify, drafts=d, tau=None))
                print(
                    f"[nfe] cache={cache_name} calibrated D={d}: {rows[-1]['nfe_speedup']:.2f}x",
                    flush=True,
                )
        for tau in taus:
            thr = [run(model, p, cache=cache, threshold=tau, **shape) for _, p in prompts]
            rows.append(row("threshold", thr, thr, verify="-", drafts=0, tau=tau))
            outs = [
                run(model, p, cache=cache, threshold=tau, graph=args.threshold_drafts, **shape)
                for _, p in prompts
            ]
            rows.append(
                row(
                    "threshold+spiffy",
                    outs,
                    thr,
                    verify=verify,
                    drafts=args.threshold_drafts,
                    tau=tau,
                )
            )
            print(f"[nfe] cache={cache_name} tau={tau}: {rows[-1]['nfe_speedup']:.2f}x", flush=True)
        if cache is None:
            d = args.threshold_drafts
            outs = [
                run(model, p, cache=None, graph=d, verify="packed", **shape) for _, p in prompts
            ]
            rows.append(
                row("packed-near-lossless", outs, vanilla, verify="packed", drafts=d, tau=None)
            )

    columns = [
        "section",
        "cache",
        "verify",
        "threshold",
        "drafts",
        "prompts",
        "nfe",
        "nfe_speedup",
        "steps_per_nfe",
        "mismatches",
        "tokens_differing",
        "paper",
    ]
    meta = {
        "model": "bundled tiny (spiffy_triton/assets/tiny)",
        "dtype": args.dtype,
        "prompts_per_kind": args.per_kind,
        "kinds": sorted({k for k, _ in prompts}),
        "rule": "LLaDA low-confidence, 1 token per step, temperature 0; threshold rows: "
        "Fast-dLLM threshold",
        "graphs": "spiffy: DraftGraph.default(D); calibrated: select_graph (objective 'steps') "
        "on vanilla traces of the calibration split (same kinds, same cache and rule)",
        "calibration_prompts": len(calibration),
        "nfe_speedup": "total 1-token vanilla NFE / total NFE of the row, same prompts and cache",
        "seconds": time.perf_counter() - start,
        **shape,
    }
    report("nfe", rows, columns, meta=meta, out_dir=args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
