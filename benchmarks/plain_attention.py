"""Vanilla's per-prompt time with the root-only forward through the graph-attention path (the
code before issue #21) and through the model's plain attention (SDPA, now), beside an
upstream-style LLaDA ``generate`` loop (one full forward per step, float64 confidence).

MEASURED on the bundled model, interleaved (each prompt decoded by every variant in turn, the
minimum of ``--repeats`` runs kept), 1 thread:

    python -m benchmarks.plain_attention [--cache none|dual] [--prompts 4] [--repeats 3]

Prints per-prompt times and the means (a keyed table: prompt x variant, ``ms`` the minimum,
p20_ms / p50_ms / p80_ms of the repeats; plain_attention.json); the outputs of all variants
must be identical.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from benchmarks import harness
from benchmarks.harness import Run
from benchmarks.timing import percentiles
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


COLUMNS = ("cache", "prompt", "tokens", "variant", "ms", "p20_ms", "p50_ms", "p80_ms", "same")
KEY = ("prompt", "variant")


def build_run(argv=None) -> Run:
    parser = harness.parser(__doc__, quick=(), repeats=3)
    parser.add_argument("--cache", choices=("none", "dual"), default="none")
    parser.add_argument("--prompts", type=int, default=4, help="held-out prompts")
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--block-length", type=int, default=32)
    run = harness.build_run("plain_attention", parser.parse_args(argv))
    if run.cache == "none":
        variants = ["graph attention (before)", "plain attention (now)", "upstream-style loop"]
    else:
        variants = ["graph attention (now)", "plain attention (reverted)"]
    return run.with_sizes(variants=variants)


def decode(model, ids, variant: str, run: Run):
    """The tokens of one variant, its attention path set in VerifyInputs."""
    if variant.startswith("upstream"):
        return upstream_loop(model, ids, run.gen_length, run.block_length)
    choice = graph_path if variant.startswith("graph") else plain_path
    VerifyInputs.attention_layout = property(choice)
    cache = None if run.cache == "none" else run.cache
    kw = dict(gen_length=run.gen_length, block_length=run.block_length, cache=cache)
    return generate(model, ids, **kw).tokens


def prompt_rows(model, index: int, ids, run: Run) -> list[dict]:
    """Every variant on one prompt, interleaved `repeats` times; the minimum is `ms`."""
    times, outs = {v: [] for v in run.variants}, {}
    for _ in range(run.repeats):
        for v in run.variants:
            start = time.perf_counter()
            outs[v] = decode(model, ids, v, run)
            times[v].append((time.perf_counter() - start) * 1e3)
    same = all(torch.equal(o, outs[run.variants[1]]) for o in outs.values())
    shown = ", ".join(f"{v} {min(times[v]):.0f} ms" for v in run.variants)
    print(f"prompt of {ids.shape[1]} tokens: {shown}; outputs identical: {same}")
    if not same:
        raise SystemExit("outputs differ between the variants")
    return [
        dict(cache=run.cache, prompt=index, tokens=ids.shape[1], variant=v, ms=min(times[v]))
        | percentiles(times[v])
        | dict(same=same)
        for v in run.variants
    ]


def measure(run: Run) -> list[dict]:
    torch.set_num_threads(1)
    model = load_model("tiny", dtype=torch.float32)
    held = tinydata.heldout_prompts(run.prompts)
    texts = [ex.prompt for kind in tinydata.KINDS for ex in held[kind]][: run.prompts]
    code_now = VerifyInputs.attention_layout  # the A/B swaps the one place that decides it
    try:
        rows = []
        for index, text in enumerate(texts):
            ids = torch.tensor([model.tokenizer.encode(text)])
            rows += prompt_rows(model, index, ids, run)
        return rows
    finally:
        VerifyInputs.attention_layout = code_now


def main(argv=None) -> int:
    run = build_run(argv)
    rows = measure(run)
    means = {v: statistics.mean(r["ms"] for r in rows if r["variant"] == v) for v in run.variants}
    meta = {"cache": run.cache, "mean_ms": {v: round(m, 1) for v, m in means.items()}}
    run.report(rows, COLUMNS, key=KEY, meta=meta)
    print(json.dumps(meta))
    first, second = run.variants[:2]
    print(f"{second} / {first}: {means[second] / means[first]:.3f}")
    if run.cache == "none":
        print(f"now / upstream-style loop: {means[second] / means[run.variants[2]]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
