"""Verify cost on LLaDA-8B-wide layers: one dual-cache forward with D drafts, and whole decodes.

    python -m benchmarks.verify_cost            # GPU: 8B-wide layers; CPU: a tiny smoke config
    python -m benchmarks.verify_cost --small    # the tiny smoke config everywhere

The model is the project's `LLaDAModel` with LLaDA-8B's width (d_model 4096, 32 heads, MLP
12288, vocab 126464) but 4 layers, random bf16 weights built on the device (no checkpoint).
Study 1 times one forward of the root block plus D drafts (block 32) over a dual cache of a
prompt of 256 or 1024 tokens followed by 64 masked tokens, for D in 0, 1, 3, 8, 16, with the
attention through

- ``triton``: `graph_attention` with backend="triton" (the kernel);
- ``torch``: `graph_attention` with backend="torch" (the package's PyTorch reference);
- ``sdpa_dense_mask``: `scaled_dot_product_attention` with the layout's dense boolean mask
  (what a decoder without the kernel would write).

``vs_d0`` is the forward's time over the same method's D = 0 forward (the goal: <= 1.3 at D = 8,
prompt 1024). Study 2 decodes 64 tokens (2 blocks of 32, dual cache) after a 256-token prompt,
vanilla and Spiffy (default graph of 8 nodes, all 8 verified), per attention method. The
weights are random, so drafts are rarely accepted: this row measures what verifying costs, not
what it saves (NFE on a trained model: benchmarks/nfe.py). Study 3 decodes the same way in
batches of B = 1, 4, 16 prompts of different lengths (256 + 8i tokens) through batched
`generate` (the rows' forwards merged varlen into one call per round), Triton attention:
``tokens_per_s`` of the whole batch, ``forwards`` the model calls, ``nfe`` the rows' summed.

On a GPU times are `triton.testing.do_bench` medians (forwards, `ms`; with p20_ms / p50_ms /
p80_ms) and the fastest synchronized wall-clock run after a warm-up run (decodes, `ms`; the
percentiles of those runs beside it). Rows are written to JSON as they are measured.
"""

from __future__ import annotations

import math
import sys
import time

import torch
import torch.nn.functional as F

import spiffy_triton  # noqa: F401  (sets the interpreter mode before triton is imported)
from benchmarks import harness
from benchmarks.harness import Run
from benchmarks.timing import Results, percentiles, percentiles_ms
from spiffy_triton.models import LLaDAConfig, LLaDAModel

METHODS = ("triton", "torch", "sdpa_dense_mask")
FULL = dict(
    config=dict(d_model=4096, n_heads=32, n_layers=4, mlp_hidden_size=12288, vocab_size=126464),
    dtype=torch.bfloat16,
    prompts=(256, 1024),
    drafts=(0, 1, 3, 8, 16),
    block=32,
    gen_length=64,
    decode_prompt=256,
    batches=(1, 4, 16),
)
SMALL = dict(  # smoke sizes for the interpreter: one block of 8, one layer
    config=dict(
        d_model=32,
        n_heads=2,
        n_layers=1,
        mlp_hidden_size=64,
        vocab_size=128,
        mask_token_id=127,
        eos_token_id=0,
    ),
    dtype=torch.float32,
    prompts=(16,),
    drafts=(0, 3),
    block=8,
    gen_length=8,
    decode_prompt=16,
    batches=(1, 2),
)
COLUMNS = (
    "study",
    "batch",
    "prompt",
    "D",
    "method",
    "ms",
    "vs_d0",
    "nfe",
    "forwards",
    "steps",
    "ms_per_token",
    "tokens_per_s",
)


class AttentionSwitchLLaDA(LLaDAModel):
    """`LLaDAModel` whose layout attention runs through one of `METHODS` (set `.method`)."""

    method = "triton"

    def _attention(self, q, k, v, layout):
        if layout is None or self.method != "sdpa_dense_mask":
            self.backend = "torch" if self.method == "torch" else "triton"
            return super()._attention(q, k, v, layout)
        mask = _dense_mask(layout, q.device)
        # rows that see no key would give NaN with SDPA; a verify layout has none
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=1.0 / math.sqrt(self.config.head_dim)
        )


_MASKS: dict = {}


def _dense_mask(layout, device):
    key = (id(layout), str(device))
    if key not in _MASKS:
        _MASKS[key] = (layout, layout.to_dense(device))  # keep the layout alive with its mask
    return _MASKS[key][1]


def build_model(sizes: dict, dtype: torch.dtype, device: str, seed: int = 0):
    """The model built on the meta device, then materialized on `device` with random weights
    (norms 1, embedding N(0, 1), matrices N(0, 1 / fan_in)) drawn there: no host copy."""
    config = LLaDAConfig(**sizes)
    with torch.device("meta"):
        model = AttentionSwitchLLaDA(config, backend="triton")
    model = model.to(dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                std = 1.0 if name.endswith("wte.weight") else p.shape[1] ** -0.5
                p.normal_(0.0, std, generator=generator)
    return model.eval()


def random_ids(length: int, config: LLaDAConfig, device, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.mask_token_id, (1, length), generator=generator)
    return ids.to(device)


def forward_rows(model, setup: dict, device, results: Results, timer) -> None:
    """Study 1: one dual-cache verify forward per (prompt, D, method)."""
    config, block = model.config, setup["block"]
    for prompt in setup["prompts"]:
        total = prompt + setup["gen_length"]
        ids = random_ids(total, config, device, seed=prompt)
        ids[:, prompt:] = config.mask_token_id
        with torch.no_grad():
            _, cache = model.prefill(ids, block_start=prompt, block_end=prompt + block)
        baseline = {}
        for drafts in setup["drafts"]:
            rows = random_ids(block * (1 + drafts), config, device, seed=drafts)
            rows[:, :block] = ids[:, prompt : prompt + block]
            positions = torch.arange(prompt, prompt + block, device=device).repeat(1 + drafts)
            for method in METHODS:
                model.method = method

                def forward(rows=rows, positions=positions, cache=cache):
                    with torch.no_grad():
                        return model(rows, position_ids=positions, cache=cache)

                times = timer(forward)
                ms = times["p50_ms"]
                if drafts == 0:
                    baseline[method] = ms
                d0 = baseline.get(method)
                row = dict(study="forward", prompt=prompt, D=drafts, method=method, ms=ms, **times)
                row["vs_d0"] = ms / d0 if d0 else None
                results.add(row)


DECODERS = (("vanilla", {}), ("spiffy_D8", {"graph": 8, "max_drafts": None}))


def timed_decodes(model, prompts, setup: dict, device, repeats: int, backend: str, extra: dict):
    """`repeats` dual-cache decodes of `prompts` (one tensor, or a list: a batch); returns the
    last output and the times (ms) after the first run, which warms kernels and allocator up."""
    from spiffy_triton.decoding import generate

    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = generate(
            model,
            prompts,
            gen_length=setup["gen_length"],
            block_length=setup["block"],
            cache="dual",
            backend=backend,
            **extra,
        )
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return out, times[1:] or times


def decode_rows(model, setup: dict, device, results: Results, repeats: int) -> None:
    """Study 2: whole decodes of `gen_length` tokens, vanilla vs Spiffy (8 drafts verified)."""
    prompt = random_ids(setup["decode_prompt"], model.config, device, seed=1)
    for method in METHODS:
        model.method = method
        backend = "torch" if method == "torch" else "triton"
        for name, extra in DECODERS:
            out, timed = timed_decodes(model, prompt, setup, device, repeats, backend, extra)
            ms = min(timed)
            results.add(
                dict(
                    study=f"decode_{name}",
                    prompt=setup["decode_prompt"],
                    D=8 if extra else 0,
                    method=method,
                    ms=ms,
                    nfe=out.nfe,
                    steps=out.steps,
                    ms_per_token=ms / setup["gen_length"],
                    **percentiles(timed),
                )
            )


def batch_rows(model, setup: dict, device, results: Results, repeats: int) -> None:
    """Study 3: batched decodes (`generate` on B prompts of different lengths, the rows'
    forwards merged varlen, spiffy_triton/decoding/batch/), vanilla vs Spiffy (8 drafts),
    dual cache, Triton attention: generated tokens per second of the whole batch."""
    model.method = "triton"
    tokens = setup["gen_length"]
    for b in setup["batches"]:
        prompts = [
            random_ids(setup["decode_prompt"] + 8 * i, model.config, device, seed=2 + i)[0]
            for i in range(b)
        ]
        for name, extra in DECODERS:
            out, timed = timed_decodes(model, prompts, setup, device, repeats, "triton", extra)
            ms = min(timed)
            results.add(
                dict(
                    study=f"batch_{name}",
                    batch=b,
                    prompt=setup["decode_prompt"],
                    D=8 if extra else 0,
                    method="triton",
                    ms=ms,
                    nfe=out.row_forwards,
                    forwards=out.forwards,
                    ms_per_token=ms / (b * tokens),
                    tokens_per_s=b * tokens / ms * 1e3,
                    **percentiles(timed),
                )
            )


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


KEY = ("study", "batch", "prompt", "D", "method")


def build_run(argv=None) -> Run:
    parser = harness.parser(
        __doc__, quick=("--small", "--quick"), quick_help="tiny smoke config (any device)"
    )
    parser.add_argument("--skip-decode", action="store_true", help="forward study only")
    parser.add_argument("--skip-batch", action="store_true", help="no batched decodes")
    run = harness.build_run("verify_cost", parser.parse_args(argv))
    full = run.device == "cuda" and not run.quick
    return run.with_sizes(full=full, setup=FULL if full else SMALL, repeats=2 if full else 1)


def main(argv=None) -> int:
    run = build_run(argv)
    setup = run.setup
    model = build_model(setup["config"], setup["dtype"], run.device)
    meta = dict(
        config=setup["config"],
        dtype=str(setup["dtype"]),
        block=setup["block"],
        gen_length=setup["gen_length"],
        cache="dual",
        timing="triton.testing.do_bench p20 / p50 / p80, ms the median (forwards); min of "
        "synchronized runs (decodes)"
        if run.device == "cuda"
        else "CPU perf_counter (Triton interpreter: not a performance number)",
        weights="random (no acceptance expected: measures the cost of verifying)",
    )
    results = run.table(COLUMNS, key=KEY, meta=meta)
    timer = percentiles_ms if run.full else (lambda fn: percentiles_ms(fn, warmup=0, reps=1))
    forward_rows(model, setup, run.device, results, timer)
    if not run.skip_decode:
        decode_rows(model, setup, run.device, results, repeats=run.repeats)
    if not run.skip_batch:
        batch_rows(model, setup, run.device, results, repeats=run.repeats)
    results.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
