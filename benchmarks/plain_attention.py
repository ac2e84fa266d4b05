"""Vanilla's per-prompt time with the root-only forward through the graph-attention path (the
code before issue #21) and through the model's plain attention (SDPA, now), beside an
upstream-style LLaDA ``generate`` loop (one full forward per step, float64 confidence).

MEASURED on the bundled model, interleaved (each prompt decoded by every variant in turn, the
minimum of ``--repeats`` runs kept), 1 thread:

    python -m benchmarks.plain_attention [--cache none|dual] [--prompts 4] [--repeats 3]

Prints per-prompt times and the means; the outputs of all variants must be identical.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from spiffy_triton import generate, load_model
from spiffy_triton.training import tinydata
from spiffy_triton.verify_inputs import VerifyInputs


def graph_path(inputs: VerifyInputs):
    """Every forward through the graph-attention path (the code before issue #21)."""
    return inputs.layout


def plain_path(inputs: VerifyInputs):
    """Plain attention whenever no draft is packed behind the root, cached or not (what the
    code does now without a cache; with a cache it was measured, then reverted: see
    docs/PERFORMANCE.md)."""
    if inputs.verify == "packed" and inputs.num_drafts > 0:
        return inputs.layout
    return None


@torch.no_grad()
def upstream_loop(model, prompt, gen_length, block_length):
    """LLaDA's generate, greedy, one token per step, no cache."""
    mask = model.config.mask_token_id
    x = torch.full((1, prompt.shape[1] + gen_length), mask, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt
    for b in range(gen_length // block_length):
        s = prompt.shape[1] + b * block_length
        e = s + block_length
        while (x[:, s:e] == mask).any():
            logits = model(x)
            logits[..., mask] = -float("inf")
            x0 = logits.argmax(-1)
            p = torch.softmax(logits.double(), -1)
            conf = torch.gather(p, -1, x0[..., None])[..., 0]
            conf[:, :s] = -float("inf")
            conf[:, e:] = -float("inf")
            conf = torch.where(x == mask, conf, torch.tensor(-float("inf"), dtype=conf.dtype))
            i = conf[0].argmax()
            x[0, i] = x0[0, i]
    return x


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", choices=("none", "dual"), default="none")
    parser.add_argument("--prompts", type=int, default=4, help="held-out prompts")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (min kept)")
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--block-length", type=int, default=32)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cache = None if args.cache == "none" else args.cache
    # the A/B swaps the one place that decides the attention path (VerifyInputs)
    code_now = VerifyInputs.attention_layout
    model = load_model("tiny", dtype=torch.float32)
    held = tinydata.heldout_prompts(args.prompts)
    texts = [ex.prompt for kind in tinydata.KINDS for ex in held[kind]][: args.prompts]
    variants = (
        ["graph attention (before)", "plain attention (now)"]
        if cache is None
        else ["graph attention (now)", "plain attention (reverted)"]
    )
    if cache is None:
        variants.append("upstream-style loop")
    times = {v: [] for v in variants}
    kw = dict(gen_length=args.gen_length, block_length=args.block_length, cache=cache)
    try:
        for text in texts:
            ids = torch.tensor([model.tokenizer.encode(text)])
            best, outs = dict.fromkeys(variants, float("inf")), {}
            for _ in range(args.repeats):
                for v in variants:
                    start = time.perf_counter()
                    if v.startswith("upstream"):
                        outs[v] = upstream_loop(model, ids, args.gen_length, args.block_length)
                    else:
                        choice = graph_path if v.startswith("graph") else plain_path
                        VerifyInputs.attention_layout = property(choice)
                        outs[v] = generate(model, ids, **kw).tokens
                    best[v] = min(best[v], time.perf_counter() - start)
            same = all(torch.equal(o, outs[variants[1]]) for o in outs.values())
            for v in variants:
                times[v].append(best[v])
            shown = ", ".join(f"{v} {best[v] * 1e3:.0f} ms" for v in variants)
            print(f"prompt of {ids.shape[1]} tokens: {shown}; outputs identical: {same}")
            if not same:
                raise SystemExit("outputs differ between the variants")
    finally:
        VerifyInputs.attention_layout = code_now
    means = {v: sum(t) / len(t) for v, t in times.items()}
    print(
        json.dumps(
            {"cache": args.cache, "mean_ms": {v: round(m * 1e3, 1) for v, m in means.items()}}
        )
    )
    print(f"{variants[1]} / {variants[0]}: {means[variants[1]] / means[variants[0]]:.3f}")
    if cache is None:
        print(f"now / upstream-style loop: {means[variants[1]] / means[variants[2]]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
