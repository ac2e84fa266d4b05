"""The main job: the bundled trained model decodes held-out prompts, vanilla and with Spiffy.

    python -m spiffy_triton.demo [--prompts 3] [--drafts 8] [--max-drafts all|auto|N]
                                 [--cache dual] [--gen-length 96] [--threshold TAU]
                                 [--temperature T]

For each prompt it prints the prompt, vanilla's text and Spiffy's text (they are identical: the
decoding is lossless), the forward passes (NFE) of each, and tokens per second: Spiffy with the
graph's drafts (``--max-drafts``, default every node: the fewest forwards) and, beside it,
Spiffy with ``max_drafts="auto"`` (the drafts worth their cost on this machine: the wall clock
to expect). Auto's one-time cost probe runs before the timed prompts and is reported apart.
Exits with status 1 if any Spiffy output differs from vanilla's in an exact mode.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch

from .decoding import generate, is_exact
from .models import load_model
from .training.tinydata import heldout_prompts

DEMO_KINDS = ("arith", "word")


def _text(tokenizer, ids: list[int], eos_id: int) -> str:
    if eos_id in ids:
        ids = ids[: ids.index(eos_id)]
    return tokenizer.decode(ids)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The demo's options; ``args.max_drafts`` resolved to `generate`'s value (None for all)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--prompts", type=int, default=3, help="prompts (cycling over arith and word)"
    )
    parser.add_argument("--drafts", type=int, default=8, help="default draft graph budget")
    parser.add_argument(
        "--max-drafts",
        default="all",
        help="drafts verified per forward: 'all' (every node, default), 'auto' (cost-aware "
        "budget measured on this machine), or an int (pruned by probability)",
    )
    parser.add_argument("--cache", default="dual", choices=("none", "prefix", "dual"))
    parser.add_argument("--gen-length", type=int, default=96)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = parser.parse_args(argv)
    max_drafts = {"all": None, "auto": "auto"}.get(args.max_drafts)
    if max_drafts is None and args.max_drafts != "all":
        if not args.max_drafts.isdigit() or int(args.max_drafts) < 1:
            parser.error(
                f"--max-drafts must be 'all', 'auto' or an int >= 1, got {args.max_drafts!r}"
            )
        max_drafts = int(args.max_drafts)
    args.max_drafts_value = max_drafts
    return args


def _decoders(args, model, examples, options) -> dict[str, dict]:
    """`generate`'s arguments per row of the demo (vanilla, Spiffy, auto); warms auto up."""
    max_drafts = args.max_drafts_value
    decoders = {
        "vanilla": {},
        "spiffy": {"graph": args.drafts, "max_drafts": max_drafts},
        "auto": {"graph": args.drafts, "max_drafts": "auto"},
    }
    if max_drafts == "auto":
        del decoders["auto"]  # the Spiffy row is auto already
    else:
        # Auto measures the verify forward's cost once per model, device and mode (cached).
        begin = time.perf_counter()
        warm = torch.tensor([model.tokenizer.encode(examples[0].prompt)], device=model.device)
        generate(model, warm, **decoders["auto"], **options)
        print(f"auto: cost probe and warm-up {time.perf_counter() - begin:.1f} s (once)\n")
    return decoders


def _decode_example(model, example, decoders, options, totals) -> bool:
    """Decode one prompt with every decoder, print the texts and counts, add to `totals`;
    whether every output equals vanilla's."""
    tokenizer, eos = model.tokenizer, model.config.eos_token_id
    prompt = torch.tensor([tokenizer.encode(example.prompt)], device=model.device)
    outs = {name: generate(model, prompt, **kw, **options) for name, kw in decoders.items()}
    vanilla = outs["vanilla"]
    p = prompt.shape[1]
    same = all(
        torch.equal(vanilla.tokens, out.tokens) and vanilla.steps == out.steps
        for out in outs.values()
    )
    print("prompt :", example.prompt.replace("\n", "\\n"))
    for name, out in outs.items():
        text = _text(tokenizer, out.tokens[0, p:].tolist(), eos)
        print(f"{name:7s}: {text!r}")
        print(
            f"         NFE {out.nfe:3d}, steps {out.steps}, "
            f"{out.stats.tokens_per_second:7.1f} tokens/s"
        )
        if out.stats.draft_budget is not None:  # auto: what it verified and why
            print(f"         {out.stats.draft_budget['decision']['reason']}")
        totals[name][0] += out.nfe
        totals[name][1] += out.stats.total_time_s
    spiffy = outs["spiffy"]
    print(
        f"identical: {same}; NFE {vanilla.nfe} -> {spiffy.nfe} "
        f"({vanilla.nfe / spiffy.nfe:.2f}x fewer forwards)\n"
    )
    return same


def _print_totals(model, decoders, totals, tokens: int) -> None:
    v_nfe, v_time = totals["vanilla"]
    summary = [f"vanilla NFE {v_nfe}, {tokens / v_time:.1f} tokens/s"]
    for name in decoders:
        if name != "vanilla":
            nfe, wall = totals[name]
            summary.append(
                f"{name} NFE {nfe} ({v_nfe / nfe:.2f}x fewer forwards), "
                f"{tokens / wall:.1f} tokens/s ({v_time / wall:.2f}x vanilla's)"
            )
    print(f"total on {model.device.type}: " + " | ".join(summary))
    print(
        "(one run each on this machine: for side-by-side wall-clock ratios over several rounds, "
        "python -m benchmarks.cost_aware)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cache = None if args.cache == "none" else args.cache
    model = load_model("tiny", dtype=getattr(torch, args.dtype))
    # The kinds the bundled model answers right (its card): sums and word problems.
    by_kind = {k: v for k, v in heldout_prompts(args.prompts).items() if k in DEMO_KINDS}
    examples = [e for group in zip(*by_kind.values()) for e in group][: args.prompts]
    options = dict(
        gen_length=args.gen_length,
        block_length=args.block_length,
        cache=cache,
        threshold=args.threshold,
        temperature=args.temperature,
        seed=args.seed,
    )
    rule = f"threshold {args.threshold}" if args.threshold is not None else "1 token/step"
    print(
        f"spiffy-triton demo: bundled model ({model.num_parameters() / 1e6:.2f}M parameters, "
        f"{args.dtype}), cache={args.cache}, gen_length={args.gen_length}, block="
        f"{args.block_length}, rule={rule}, temperature={args.temperature}, "
        f"Spiffy graph=default({args.drafts}), drafts per forward: {args.max_drafts}\n"
    )
    decoders = _decoders(args, model, examples, options)
    totals = {name: [0, 0.0] for name in decoders}
    all_equal = True
    for example in examples:
        all_equal &= _decode_example(model, example, decoders, options, totals)
    _print_totals(model, decoders, totals, len(examples) * args.gen_length)
    exact = is_exact(cache, "batch" if cache is None else "packed")
    print(f"all outputs identical: {all_equal} (verification mode exact: {exact})")
    return 0 if all_equal or not exact else 1


if __name__ == "__main__":
    sys.exit(main())
