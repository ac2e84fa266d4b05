"""Graph-masked attention: the Triton kernel vs SDPA (dense mask), FlexAttention (block mask
from the same layout) and drafts as separate batch rows, on LLaDA-8B verification shapes.

    python -m benchmarks.graph_attention            # GPU: the full grid; CPU: smoke sizes
    python -m benchmarks.graph_attention --quick    # smoke sizes everywhere
    python -m benchmarks.graph_attention --contexts 1024,4096 --drafts 0,4,8,16   # a sub-grid

On a GPU every method is timed with `triton.testing.do_bench` (quantiles 0.2 / 0.5 / 0.8:
p20_ms / p50_ms / p80_ms; `ms` is the median) and reported as ms and TFLOP/s over the
layout's visible (query, key) pairs (4 * d FLOPs per pair and head: the same useful-work
numerator for every method). Everywhere, each method's K/V bytes read are
modeled from its tiling: the kernel reads the key tiles of its schedule once per (query tile,
head group); SDPA with a dense mask reads every key for every 128-row query tile plus the
mask; FlexAttention reads every 128 x 128 block with a visible pair; separate rows run
``1 + D`` full sequences (uncached: every row recomputes the context's queries too).
"""

from __future__ import annotations

import math
import warnings

import torch

import spiffy_triton  # sets the interpreter mode before triton is imported
from benchmarks import harness
from benchmarks.harness import Run
from benchmarks.timing import on_gpu, percentiles_ms
from spiffy_triton import SegmentLayout
from spiffy_triton.kernels.graph_attention import select_config
from spiffy_triton.layout import CAUSAL, ENTRY_K_END, ENTRY_K_START, FULL

FLEX_BLOCK = 128
SDPA_BLOCK_M = 128
COLUMNS = (
    "cached",
    "context",
    "D",
    "method",
    "ms",
    "p20_ms",
    "p80_ms",
    "tflops",
    "speedup_vs_sdpa",
    "kv_mb_modeled",
    "note",
)


def kernel_kv_bytes(layout: SegmentLayout, heads: int, kv_heads: int, d: int, dtype) -> int:
    group = heads // kv_heads
    config = select_config(d, dtype, layout.num_q_rows, group)
    sched = layout.schedule(config.block_m // config.heads_per_tile, config.block_n)
    rows = int((sched.entries[:, ENTRY_K_END] - sched.entries[:, ENTRY_K_START]).sum())
    programs_per_tile = heads // config.heads_per_tile
    return 2 * rows * d * dtype.itemsize * programs_per_tile


def sdpa_kv_bytes(layout: SegmentLayout, heads: int, d: int, dtype) -> int:
    q_tiles = math.ceil(layout.num_q_rows / SDPA_BLOCK_M)
    kv = 2 * q_tiles * layout.num_k_rows * d * dtype.itemsize * heads
    mask = layout.num_q_rows * layout.num_k_rows * dtype.itemsize  # additive bias, one head
    return kv + mask


def flex_kv_bytes(layout: SegmentLayout, heads: int, d: int, dtype) -> int:
    dense = layout.to_dense()
    mq, mk = dense.shape
    pad = torch.zeros(
        math.ceil(mq / FLEX_BLOCK) * FLEX_BLOCK,
        math.ceil(mk / FLEX_BLOCK) * FLEX_BLOCK,
        dtype=torch.bool,
    )
    pad[:mq, :mk] = dense
    blocks = pad.view(
        pad.shape[0] // FLEX_BLOCK, FLEX_BLOCK, pad.shape[1] // FLEX_BLOCK, FLEX_BLOCK
    )
    visited = blocks.any(dim=3).any(dim=1)  # [q blocks, k blocks]
    widths = torch.tensor([min(FLEX_BLOCK, mk - j * FLEX_BLOCK) for j in range(visited.shape[1])])
    return 2 * int((visited * widths).sum()) * d * dtype.itemsize * heads


def rows_kv_bytes(prefix, block, suffix, drafts, cached, heads, d, dtype) -> int:
    seq = prefix + block + suffix
    q_rows = block if cached else seq
    return 2 * (1 + drafts) * math.ceil(q_rows / SDPA_BLOCK_M) * seq * d * dtype.itemsize * heads


def flex_mask_mod(layout: SegmentLayout, device):
    """A FlexAttention mask_mod from the layout's segments (no dense mask)."""
    q_seg, q_off = (t.to(device) for t in layout.row_segments())
    k_lengths = torch.tensor(layout.k_lengths)
    k_seg = torch.repeat_interleave(torch.arange(len(k_lengths)), k_lengths).to(device)
    k_off = (torch.arange(layout.num_k_rows) - torch.tensor(layout.k_starts)[k_seg.cpu()]).to(
        device
    )
    vis = layout.visibility.to(device=device, dtype=torch.int64)

    def mask_mod(b, h, q_idx, kv_idx):
        relation = vis[q_seg[q_idx], k_seg[kv_idx]]
        return (relation == FULL) | ((relation == CAUSAL) & (k_off[kv_idx] <= q_off[q_idx]))

    return mask_mod


def flex_block_mask(layout: SegmentLayout, device):
    """FlexAttention's BlockMask of the layout (its mask_mod evaluated per 128 x 128 block)."""
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(
        flex_mask_mod(layout, device),
        None,
        None,
        layout.num_q_rows,
        layout.num_k_rows,
        device=device,
    )


def time_methods(methods: dict, flops: int) -> list[dict]:
    """One row per method: its times, TFLOP/s and modeled K/V bytes, and its largest
    difference from the first method's output (the kernel's)."""
    rows = []
    reference = None
    for name, (fn, kv_bytes, note) in methods.items():
        try:
            out = fn()
            if name != "separate_rows":
                if reference is None:
                    reference = out.float()
                else:
                    err = (out.float() - reference).abs().max().item()
                    note = (note + f" max|diff| vs triton {err:.2g}").strip()
            times = percentiles_ms(fn, **({} if on_gpu() else {"warmup": 1, "reps": 2}))
        except Exception as error:
            rows.append(dict(method=name, note=f"failed: {type(error).__name__}: {error}"[:120]))
            continue
        ms = times["p50_ms"]
        rows.append(
            dict(
                method=name,
                ms=ms,
                **times,
                tflops=flops / (ms * 1e-3) / 1e12,
                kv_mb_modeled=kv_bytes / 2**20,
                note=note,
            )
        )
    return rows


def run_case(prefix, block, suffix, drafts, cached, *, heads, d, dtype, device, flex_fn):
    layout = SegmentLayout.spiffy(prefix, block, suffix, drafts, cached=cached)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    q = rand(1, heads, layout.num_q_rows, d)
    k = rand(1, heads, layout.num_k_rows, d)
    v = rand(1, heads, layout.num_k_rows, d)
    flops = 4 * d * heads * layout.num_visible_pairs()
    dense = layout.to_dense(device)
    sdpa = torch.nn.functional.scaled_dot_product_attention

    seq = prefix + block + suffix
    rows_q = rand(1 + drafts, heads, block if cached else seq, d)
    rows_k, rows_v = rand(1 + drafts, heads, seq, d), rand(1 + drafts, heads, seq, d)

    methods = {
        "triton": (
            lambda: spiffy_triton.graph_attention(q, k, v, layout, backend="triton"),
            kernel_kv_bytes(layout, heads, heads, d, dtype),
            "",
        ),
        "sdpa_dense_mask": (
            lambda: sdpa(q, k, v, attn_mask=dense),
            sdpa_kv_bytes(layout, heads, d, dtype),
            "",
        ),
        "separate_rows": (
            lambda: sdpa(rows_q, rows_k, rows_v),
            rows_kv_bytes(prefix, block, suffix, drafts, cached, heads, d, dtype),
            "1+D rows, full context each",
        ),
    }
    flex_note = ""
    if flex_fn is not None:
        try:
            block_mask = flex_block_mask(layout, device)
            methods["flex_block_mask"] = (
                lambda: flex_fn(q, k, v, block_mask=block_mask),
                flex_kv_bytes(layout, heads, d, dtype),
                "",
            )
        except Exception as error:  # report, do not hide: FlexAttention is optional here
            flex_note = f"flex unavailable: {type(error).__name__}: {str(error)[:80]}"
    rows = time_methods(methods, flops)
    if flex_note:
        rows.append(dict(method="flex_block_mask", note=flex_note))
    sdpa_ms = next((r.get("ms") for r in rows if r["method"] == "sdpa_dense_mask"), None)
    for row in rows:
        row.update(cached=cached, context=prefix + suffix, D=drafts)
        if sdpa_ms and row.get("ms"):
            row["speedup_vs_sdpa"] = sdpa_ms / row["ms"]
    return rows


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


KEY = ("cached", "context", "D", "method")


def build_run(argv=None) -> Run:
    parser = harness.parser(__doc__, quick_help="smoke sizes")
    parser.add_argument("--contexts", type=_ints, default=(256, 1024, 4096), help="GPU grid")
    parser.add_argument("--drafts", type=_ints, default=(0, 4, 8, 16), help="GPU grid")
    run = harness.build_run("graph_attention", parser.parse_args(argv))
    if run.device == "cuda" and not run.quick:
        return run.with_sizes(heads=32, d=128, dtype=torch.bfloat16, block=32)
    # the interpreter is slow: tiny heads and lengths, timings are not meaningful on CPU
    dtype = torch.float16 if run.device == "cuda" else torch.float32
    return run.with_sizes(heads=2, d=64, dtype=dtype, block=16, contexts=(96,), drafts=(0, 4))


def flex_for(run: Run):
    if run.device == "cuda" and not run.quick:
        return torch.compile(_flex_attention())
    # eager FlexAttention on CPU warns that it is unfused: expected for a smoke run
    warnings.filterwarnings("ignore", message=".*flex_attention.*")
    return _flex_attention()


def measure(run: Run, results) -> None:
    flex_fn = flex_for(run)
    shape = dict(heads=run.heads, d=run.d, dtype=run.dtype, device=run.device, flex_fn=flex_fn)
    for cached in (True, False):  # the dual-cache verify shapes first: what Spiffy runs
        for context in run.contexts:
            # LLaDA layout: the prompt and finished blocks before the block, masked future after
            prefix, suffix = context // 2, context - context // 2
            for drafts in run.drafts:
                for row in run_case(prefix, run.block, suffix, drafts, cached, **shape):
                    results.add(row)


def main(argv=None):
    run = build_run(argv)
    meta = dict(
        heads=run.heads,
        head_dim=run.d,
        dtype=str(run.dtype),
        block=run.block,
        timing="triton.testing.do_bench p20 / p50 / p80 (ms: the median)"
        if run.device == "cuda"
        else "CPU perf_counter p20 / p50 / p80 (Triton interpreter: not a performance number)",
        tflops="4 * d * heads * visible pairs of the layout / time",
        kv_mb_modeled=__doc__.split("Everywhere, ")[1].split('\n"""')[0].strip(),
    )
    results = run.table(COLUMNS, key=KEY, meta=meta)
    measure(run, results)
    results.finish()


def _flex_attention():
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError:
        return None
    return flex_attention


if __name__ == "__main__":
    main()
